//! `CreateNamespace`: namespaces live on shard 0, unique by name.

use crate::limits;
use crate::model::{ErrorCode, NamespaceRecord, Rejection, Reply};
use crate::state::ShardState;

use super::{Handled, Outcome, Write, invalid};

/// Longest namespace description, in bytes.
pub const NAMESPACE_DESCRIPTION_BYTES_MAX: usize = 4096;

pub(super) fn create(state: &mut ShardState, now: u64, name: &str, description: &str, out: &mut Outcome) -> Handled {
    limits::check_name("namespace", name)?;
    if description.len() > NAMESPACE_DESCRIPTION_BYTES_MAX {
        return Err(invalid(format!("namespace description is longer than {NAMESPACE_DESCRIPTION_BYTES_MAX} bytes")));
    }
    if state.namespaces.contains_key(name) {
        return Err(Rejection::new(ErrorCode::AlreadyExists, format!("namespace {name:?} already exists")));
    }
    let record = NamespaceRecord { name: name.to_string(), description: description.to_string(), created_ms: now };
    state.namespaces.insert(name.to_string(), record.clone());
    out.writes.push(Write::PutNamespace(record.clone()));
    Ok(Reply::NamespaceCreated(record))
}

#[cfg(test)]
mod tests {
    use crate::apply::Write;
    use crate::command::CommandKind;
    use crate::model::{ErrorCode, Reply};
    use crate::testing::{Harness, domain_writes, rejected};

    #[test]
    fn namespaces_are_unique() {
        let mut h = Harness::default();
        let created = h.run(CommandKind::CreateNamespace { name: "payments".into(), description: String::new() });
        assert!(matches!(created.reply, Reply::NamespaceCreated(_)));
        assert!(matches!(domain_writes(&created).as_slice(), [Write::PutNamespace(_)]));
        assert!(created.effects.is_empty());
        assert_eq!(
            rejected(
                &h.run(CommandKind::CreateNamespace { name: "payments".into(), description: String::new() }).reply
            ),
            ErrorCode::AlreadyExists
        );
        let long = "d".repeat(4097);
        assert_eq!(
            rejected(&h.run(CommandKind::CreateNamespace { name: "other".into(), description: long }).reply),
            ErrorCode::InvalidArgument
        );
    }
}
