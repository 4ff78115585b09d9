//! The order workflow: reserve stock, charge the card, wait for approval,
//! wait two seconds, ship.
//!
//! ```text
//! cargo run --release -p weft-sdk --example order -- --server http://127.0.0.1:7470
//! cargo run --release -p weft-sdk --example order -- --start 3 --exit-after-start
//! cargo run --release -p weft-sdk --example order -- --server 127.0.0.1:7471,127.0.0.1:7472,127.0.0.1:7473
//! ```
//!
//! Given a cluster's nodes, the worker and the starter move to another node when one fails.
//!
//! Workflow type `order` on task queue `orders`; input
//! `{"order_id": "...", "amount_cents": N, "fail_first_charge": bool}`.
//! Send it the signal `approve` to let it ship. Progress lines are printed
//! from steps and activities (side effects run once; workflow code itself
//! may be replayed, so it prints nothing).

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use anyhow::Context as _;
use clap::Parser;
use serde::{Deserialize, Serialize};
use weft_sdk::{
    ActivityContext, ActivityError, ActivityOptions, Client, RetryPolicy, Worker, WorkflowContext, WorkflowError,
};

const TASK_QUEUE: &str = "orders";

#[derive(Parser, Debug)]
#[command(about = "Runs a worker for the `order` workflow and optionally starts sample orders")]
struct Args {
    /// Address of a Weft node, or a comma-separated list of the cluster's nodes
    /// (`a:7471,b:7472,c:7473`): calls move to another node when one fails.
    #[arg(long, env = "WEFT_SERVER", default_value = "http://127.0.0.1:7470", value_name = "ADDR[,ADDR...]")]
    server: String,
    #[arg(long, default_value = weft_sdk::DEFAULT_NAMESPACE)]
    namespace: String,
    /// Also start this many sample orders, approve each, and print each result.
    #[arg(long, default_value_t = 0)]
    start: usize,
    /// Exit once the started orders have completed instead of serving on.
    #[arg(long)]
    exit_after_start: bool,
}

#[derive(Clone, Debug, Serialize, Deserialize)]
struct OrderInput {
    order_id: String,
    amount_cents: u64,
    #[serde(default)]
    fail_first_charge: bool,
}

#[derive(Clone, Debug, Serialize, Deserialize)]
struct ChargeInput {
    order_id: String,
    amount_cents: u64,
    /// Made by the workflow, so a retried charge keeps its id (an idempotency key).
    charge_id: String,
    fail_first_attempt: bool,
}

#[derive(Clone, Debug, Serialize, Deserialize)]
struct OrderResult {
    order_id: String,
    status: String,
    charge_id: String,
}

async fn order_workflow(ctx: WorkflowContext, input: OrderInput) -> Result<OrderResult, WorkflowError> {
    let order_id = input.order_id.clone();

    let id = order_id.clone();
    let reservation: String = ctx
        .step("reserve", move || {
            let id = id.clone();
            async move {
                println!("[{id}] reserve: stock reserved");
                Ok::<_, anyhow::Error>(format!("res_{id}"))
            }
        })
        .await?;

    let charge = ChargeInput {
        order_id: order_id.clone(),
        amount_cents: input.amount_cents,
        charge_id: format!("ch_{}", ctx.uuid().simple()),
        fail_first_attempt: input.fail_first_charge,
    };
    let charge_options = ActivityOptions {
        retry_policy: RetryPolicy {
            initial_interval: Duration::from_secs(1),
            backoff_coefficient: 2.0,
            maximum_attempts: 3,
            ..RetryPolicy::default()
        },
        start_to_close_timeout: Some(Duration::from_secs(10)),
        ..ActivityOptions::default()
    };
    let charge_id: String = ctx.activity("charge", &charge, charge_options).await?;

    let approval: Option<serde_json::Value> = ctx.signal("approve", Some(Duration::from_secs(3600))).await?;
    if approval.is_none() {
        let id = order_id.clone();
        let reservation = reservation.clone();
        let _: () = ctx
            .step("release", move || {
                let (id, reservation) = (id.clone(), reservation.clone());
                async move {
                    println!("[{id}] release: approval timed out, reservation {reservation} released");
                    Ok::<_, anyhow::Error>(())
                }
            })
            .await?;
        return Err(WorkflowError::new("NotApproved", "order not approved within 1 hour"));
    }

    ctx.sleep(Duration::from_secs(2)).await?;

    let id = order_id.clone();
    let _: () = ctx
        .step("ship", move || {
            let id = id.clone();
            async move {
                println!("[{id}] ship: handed to the carrier");
                Ok::<_, anyhow::Error>(())
            }
        })
        .await?;

    Ok(OrderResult { order_id, status: "shipped".into(), charge_id })
}

async fn charge_activity(ctx: ActivityContext, input: ChargeInput) -> Result<String, ActivityError> {
    let attempt = ctx.attempt();
    println!("[{}] charge: attempt {attempt}, {} cents, {}", input.order_id, input.amount_cents, input.charge_id);
    if input.fail_first_attempt && attempt == 1 {
        println!("[{}] charge: attempt 1 failed (simulated gateway timeout), the server will retry", input.order_id);
        return Err(ActivityError::new("GatewayTimeout", "payment gateway timed out (simulated on the first attempt)"));
    }
    tokio::time::sleep(Duration::from_millis(100)).await;
    println!("[{}] charge: charged {}", input.order_id, input.charge_id);
    Ok(input.charge_id)
}

/// Starts `count` sample orders, approves each, prints each result as it
/// arrives; returns how many did not ship.
async fn start_sample_orders(client: Client, count: usize) -> anyhow::Result<usize> {
    #[allow(clippy::disallowed_methods, reason = "the clock ban is for weft-core; ids here only need to be unique")]
    let stamp = SystemTime::now().duration_since(UNIX_EPOCH).unwrap_or_default().as_millis();
    let mut waiting = tokio::task::JoinSet::new();
    for n in 1..=count {
        let workflow_id = format!("order-{n}-{stamp}");
        let input = OrderInput {
            order_id: workflow_id.clone(),
            amount_cents: 1_000 * n as u64 + 99,
            // The first order shows a retried charge.
            fail_first_charge: n == 1,
        };
        let run = client
            .start_workflow("order", &workflow_id, TASK_QUEUE, &input)
            .await
            .with_context(|| format!("start workflow {workflow_id}"))?;
        println!("started {workflow_id} (run {})", run.run_id);
        client
            .signal_workflow(&workflow_id, "approve", &serde_json::json!({"approved_by": "order example"}))
            .await
            .with_context(|| format!("signal approve to {workflow_id}"))?;
        println!("sent approve to {workflow_id}");
        let client = client.clone();
        waiting.spawn(async move {
            let result = client.workflow_result::<OrderResult>(&workflow_id).await;
            (workflow_id, result)
        });
    }
    let mut failed = 0;
    while let Some(joined) = waiting.join_next().await {
        let (workflow_id, result) = joined.context("wait for a workflow result")?;
        match result {
            Ok(result) => println!(
                "result of {workflow_id}: {}",
                serde_json::to_string(&result).unwrap_or_else(|_| format!("{result:?}"))
            ),
            Err(error) => {
                failed += 1;
                println!("result of {workflow_id}: {error}");
            }
        }
    }
    println!("{} of {count} orders shipped", count - failed);
    Ok(failed)
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("warn,weft_sdk=info")),
        )
        .with_writer(std::io::stderr)
        .init();
    let args = Args::parse();
    let client = Client::connect(&args.server)
        .await
        .with_context(|| format!("connect to the Weft nodes at {}", args.server))?
        .with_namespace(args.namespace.clone());
    let worker = Worker::builder(client.clone(), TASK_QUEUE)
        .register_workflow("order", order_workflow)
        .register_activity("charge", charge_activity)
        .build();
    println!(
        "serving workflow `order` and activity `charge` on task queue `{TASK_QUEUE}` ({}, namespace {})",
        args.server, args.namespace
    );

    if args.start == 0 {
        return worker.run().await;
    }
    let starter = tokio::spawn(start_sample_orders(client, args.start));
    if args.exit_after_start {
        let (done_tx, done_rx) = tokio::sync::oneshot::channel();
        let watcher = tokio::spawn(async move {
            let outcome = starter.await;
            let _ = done_tx.send(());
            outcome
        });
        worker
            .run_until(async {
                tokio::select! {
                    _ = done_rx => {}
                    _ = tokio::signal::ctrl_c() => {}
                }
            })
            .await?;
        let failed = match watcher.await {
            Ok(Ok(Ok(failed))) => failed,
            Ok(Ok(Err(error))) => return Err(error),
            Ok(Err(join_error)) | Err(join_error) => return Err(join_error.into()),
        };
        anyhow::ensure!(failed == 0, "{failed} of {} orders did not ship", args.start);
        return Ok(());
    }
    let starter = tokio::spawn(async move {
        match starter.await {
            Ok(Ok(_)) => {}
            Ok(Err(error)) => eprintln!("starting sample orders failed: {error:#}"),
            Err(error) => eprintln!("starting sample orders failed: {error}"),
        }
    });
    worker.run().await?;
    starter.abort();
    Ok(())
}
