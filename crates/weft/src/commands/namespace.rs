//! `weft namespace ...`: create, list, describe.

use std::process::ExitCode;

use serde_json::{Value, json};
use weft_proto::v1::{CreateNamespaceRequest, DescribeNamespaceRequest, ListNamespacesRequest, Namespace};

use super::Context;
use crate::cli::NamespaceCommand;
use crate::client::CliError;
use crate::output;

pub async fn run(context: &mut Context, command: NamespaceCommand) -> Result<ExitCode, CliError> {
    match command {
        NamespaceCommand::Create { name, description } => {
            let request = CreateNamespaceRequest { name: name.clone(), description };
            let response =
                context.admin(request, |mut admin, r| async move { admin.create_namespace(r).await }).await?;
            let namespace = response.namespace.unwrap_or(Namespace { name, ..Default::default() });
            output::print(context.output, namespace_json(&namespace), || {
                format!("namespace {} created", namespace.name)
            });
        }
        NamespaceCommand::List => {
            let response = context
                .admin(ListNamespacesRequest {}, |mut admin, r| async move { admin.list_namespaces(r).await })
                .await?;
            let json = json!({
                "namespaces": response.namespaces.iter().map(namespace_json).collect::<Vec<_>>(),
            });
            output::print(context.output, json, || {
                let mut table = output::table(&["name", "description", "created"]);
                for namespace in &response.namespaces {
                    table.add_row(vec![
                        namespace.name.clone(),
                        output::or_dash(&namespace.description),
                        output::format_time_ms(namespace.created_time_ms),
                    ]);
                }
                table.to_string()
            });
        }
        NamespaceCommand::Describe { name } => {
            let request = DescribeNamespaceRequest { name: name.clone() };
            let response =
                context.admin(request, |mut admin, r| async move { admin.describe_namespace(r).await }).await?;
            let namespace = response.namespace.unwrap_or(Namespace { name, ..Default::default() });
            let mut json = namespace_json(&namespace);
            json["open_workflows"] = json!(response.open_workflows);
            output::print(context.output, json, || {
                output::key_values(&[
                    ("name", namespace.name.clone()),
                    ("description", output::or_dash(&namespace.description)),
                    ("created", output::format_time_ms(namespace.created_time_ms)),
                    ("open workflows", response.open_workflows.to_string()),
                ])
                .to_string()
            });
        }
    }
    Ok(ExitCode::SUCCESS)
}

fn namespace_json(namespace: &Namespace) -> Value {
    json!({
        "name": namespace.name,
        "description": namespace.description,
        "created_time_ms": namespace.created_time_ms,
        "created_time": output::time_json(namespace.created_time_ms),
    })
}
