//! Cluster records of shard 0: `AllocateNodeId` and `RetireNodeId`, the node ids of membership
//! changes, kept so that an id is never given out twice, even after its node was removed; and
//! `ActivateCommandVersion`, the command format the cluster's leaders may propose.
//!
//! Invariants: [`ShardState::node_id_max`] only grows; every id `AllocateNodeId` answers is
//! above it and above the members' ids the leader names. [`ShardState::command_version`] only
//! grows, and never past the versions this build knows (a higher one is refused before apply
//! by the node, which stops the shard: it must run a newer build).

use crate::model::{Rejection, Reply};
use crate::state::ShardState;

use super::{Handled, Outcome, Write, invalid};

pub(super) fn allocate(state: &mut ShardState, above: u64, out: &mut Outcome) -> Handled {
    let node_id = state.node_id_max.max(above).checked_add(1).ok_or_else(no_ids_left)?;
    state.node_id_max = node_id;
    out.writes.push(Write::PutNodeIdMax { node_id });
    Ok(Reply::NodeId(node_id))
}

pub(super) fn retire(state: &mut ShardState, node_id: u64, out: &mut Outcome) -> Handled {
    if node_id == 0 {
        return Err(invalid("node id 0 is not a node".to_string()));
    }
    if node_id > state.node_id_max {
        state.node_id_max = node_id;
        out.writes.push(Write::PutNodeIdMax { node_id });
    }
    Ok(Reply::NodeId(node_id))
}

pub(super) fn activate_version(state: &mut ShardState, version: u32, out: &mut Outcome) -> Handled {
    if !(crate::command::COMMAND_VERSION_BASE..=crate::command::COMMAND_VERSION).contains(&version) {
        return Err(invalid(format!(
            "command version {version} is not one this build knows (1 to {})",
            crate::command::COMMAND_VERSION
        )));
    }
    if version > state.command_version {
        state.command_version = version;
        out.writes.push(Write::PutCommandVersion { version });
    }
    Ok(Reply::Done)
}

fn no_ids_left() -> Rejection {
    invalid("no node id is left to give out".to_string())
}

#[cfg(test)]
mod tests {
    use crate::apply::Write;
    use crate::command::CommandKind;
    use crate::model::{ErrorCode, Reply};
    use crate::testing::{Harness, domain_writes, rejected};

    fn allocated(h: &mut Harness, above: u64) -> u64 {
        match h.run(CommandKind::AllocateNodeId { above }).reply {
            Reply::NodeId(id) => id,
            other => panic!("expected a node id, got {other:?}"),
        }
    }

    #[test]
    fn node_ids_are_never_given_out_twice() {
        let mut h = Harness::default();
        // Members 1..=3: the first new node is 4, the next 5 even if the leader still names 3.
        assert_eq!(allocated(&mut h, 3), 4);
        assert_eq!(allocated(&mut h, 3), 5);
        // A retired id above everything given out raises the floor; one below changes nothing.
        let retired = h.run(CommandKind::RetireNodeId { node_id: 9 });
        assert_eq!(retired.reply, Reply::NodeId(9));
        assert!(matches!(domain_writes(&retired).as_slice(), [Write::PutNodeIdMax { node_id: 9 }]));
        assert!(domain_writes(&h.run(CommandKind::RetireNodeId { node_id: 2 })).is_empty());
        assert_eq!(allocated(&mut h, 3), 10);
        // Members the leader knows of above the floor are respected too.
        assert_eq!(allocated(&mut h, 20), 21);
        assert_eq!(rejected(&h.run(CommandKind::RetireNodeId { node_id: 0 }).reply), ErrorCode::InvalidArgument);
        assert_eq!(rejected(&h.run(CommandKind::AllocateNodeId { above: u64::MAX }).reply), ErrorCode::InvalidArgument);
        assert_eq!(h.state.node_id_max, 21, "a refused allocation changes nothing");
    }

    #[test]
    fn the_command_version_only_grows() {
        let mut h = Harness::default();
        let activated = h.run(CommandKind::ActivateCommandVersion { version: 2 });
        assert!(matches!(domain_writes(&activated).as_slice(), [Write::PutCommandVersion { version: 2 }]));
        assert_eq!(h.state.command_version, 2);
        assert!(domain_writes(&h.run(CommandKind::ActivateCommandVersion { version: 1 })).is_empty());
        assert_eq!(h.state.command_version, 2, "never lowered");
        let unknown = h.run(CommandKind::ActivateCommandVersion { version: crate::command::COMMAND_VERSION + 1 });
        assert_eq!(rejected(&unknown.reply), ErrorCode::InvalidArgument);
    }
}
