//! Property tests of `apply` over random command sequences: no panics, valid histories and
//! run invariants after every command, determinism across replicas.

use proptest::prelude::*;

use crate::apply::apply;
use crate::command::CommandKind;
use crate::ids::{TaskToken, TokenTask, WorkflowKey};
use crate::model::Failure;
use crate::state::ShardState;
use crate::testing::{Harness, action_strategy, drive, json, step};

proptest! {
    #![proptest_config(ProptestConfig { cases: 256, ..ProptestConfig::default() })]

    /// Random lifecycles never panic, keep every history valid (checked in
    /// `Harness::run` after each command) and keep run invariants.
    #[test]
    fn random_commands_keep_histories_valid(actions in proptest::collection::vec(action_strategy(), 1..80)) {
        let mut h = Harness::default();
        drive(&mut h, &actions);
    }

    /// Two replicas applying the same commands end in the same state with the
    /// same outcomes.
    #[test]
    fn replicas_applying_the_same_commands_agree(actions in proptest::collection::vec(action_strategy(), 1..60)) {
        let mut leader = Harness::default();
        let commands = drive(&mut leader, &actions);
        let mut a = ShardState::default();
        let mut b = ShardState::default();
        for command in &commands {
            let outcome_a = apply(&mut a, command);
            let outcome_b = apply(&mut b, command);
            prop_assert_eq!(outcome_a, outcome_b);
        }
        prop_assert_eq!(&a, &b);
        prop_assert_eq!(a, leader.state);
    }

    /// Commands with arbitrary tokens and names are refused or applied, never panic.
    #[test]
    fn arbitrary_tokens_never_panic(
        id in ".{0,300}", run in ".{0,40}", seq in any::<u32>(), attempt in any::<u32>(),
        scheduled in any::<u64>(), seen in any::<u64>(), workflow in any::<bool>(),
    ) {
        let mut h = Harness::default();
        h.start("w", "");
        let task = if workflow { TokenTask::Workflow { scheduled_event_id: scheduled, seen_event_id: seen } } else { TokenTask::Activity { seq } };
        let token = TaskToken { shard: 0, key: WorkflowKey::new("default", id.clone()), run_id: run, task, attempt, started_ms: 0 };
        h.run(CommandKind::CompleteWorkflowTask { token: token.clone(), commands: vec![step(seq, &id, "1")], new_run_id: "n".into(), inline_next_task: false, steps_observed: false });
        h.run(CommandKind::CompleteActivity { token: token.clone(), result: json("1") });
        h.run(CommandKind::FailActivity { token: token.clone(), failure: Failure::new("E", id.clone()) });
        h.run(CommandKind::RecordHeartbeat { token, details: json("1") });
        h.run(CommandKind::Signal { key: WorkflowKey::new("default", id.clone()), run_id: String::new(), name: id.clone(), input: json("1"), request_id: id });
    }
}
