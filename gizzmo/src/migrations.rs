//! The migration commands: start a move, new replica, split, copy, diff, repair or rebalance
//! on the servers, then watch it with progress bars until it ends (or return at once with
//! `--detach`). A watcher that dies loses nothing: the migration runs in the servers' job
//! workers, and `gizzmo watch ID` (or rerunning `gizzmo rebalance`) picks it up again.

use std::time::Duration;

use anyhow::{Context, bail};
use indicatif::{MultiProgress, ProgressBar, ProgressDrawTarget, ProgressStyle};
use proto::gizzard::v1 as pb;
use serde_json::{Value, json};

use super::{
    MigrationCommand, RebalanceAction, StartArgs,
    client::{ManagerClient, call_error},
    render,
};

/// How often a watcher asks for progress.
const WATCH_EVERY: Duration = Duration::from_millis(500);

/// Runs a migration command and returns what to print.
pub async fn run(
    client: &mut ManagerClient,
    command: MigrationCommand,
    json: bool,
) -> anyhow::Result<String> {
    use pb::start_migration_request::Kind;
    let (kind, start) = match command {
        MigrationCommand::Move { shard, to, start } => (
            Kind::Move(pb::MoveRequest {
                shard: shard.to_string(),
                to_host: to,
            }),
            start,
        ),
        MigrationCommand::AddReplica { shard, on, start } => (
            Kind::AddReplica(pb::AddReplicaRequest {
                shard: shard.to_string(),
                host: on,
            }),
            start,
        ),
        MigrationCommand::Split {
            table,
            base_id,
            at,
            start,
        } => (
            Kind::Split(pb::SplitRequest {
                table_id: table,
                base_id,
                at,
            }),
            start,
        ),
        MigrationCommand::Copy { from, to, start } => (Kind::Copy(pair(from, to)), start),
        MigrationCommand::Diff { a, b, start } => (Kind::Diff(pair(a, b)), start),
        MigrationCommand::Repair { a, b, start } => (Kind::Repair(pair(a, b)), start),
        MigrationCommand::Rebalance { action, args } => match action {
            Some(RebalanceAction::Status) => {
                let id = running_rebalance(client).await?;
                return Ok(show(&get(client, id).await?, json));
            }
            Some(RebalanceAction::Cancel) => {
                let id = running_rebalance(client).await?;
                return cancel(client, id, json).await;
            }
            None => (
                Kind::Rebalance(pb::RebalanceRequest {
                    hosts: args.hosts,
                    max_copies: args.max_copies,
                    copies_per_host: args.copies_per_host,
                    dry_run: args.dry_run,
                }),
                StartArgs {
                    detach: args.start.detach || args.dry_run,
                    ..args.start
                },
            ),
        },
        MigrationCommand::Watch { id } => return watch(client, id, json).await,
        MigrationCommand::Show { id } => return Ok(show(&get(client, id).await?, json)),
        MigrationCommand::Cancel { id } => return cancel(client, id, json).await,
        MigrationCommand::List { all } => return list(client, all, json).await,
    };
    let started = client
        .start_migration(pb::StartMigrationRequest {
            kind: Some(kind),
            rows_per_second: start.rows_per_second.unwrap_or(0),
        })
        .await
        .map_err(|s| call_error("start the migration", s))?
        .into_inner();
    if started.id == 0 || start.detach {
        return Ok(show(&started, json));
    }
    if started.resumed {
        eprintln!(
            "rebalance {} is already running; watching it (gizzmo rebalance cancel stops it)",
            started.id
        );
    }
    watch(client, started.id, json).await
}

fn pair(a: gizzard::nameserver::ShardId, b: gizzard::nameserver::ShardId) -> pb::ShardPair {
    pb::ShardPair {
        a: a.to_string(),
        b: b.to_string(),
        hashes: None,
    }
}

async fn get(client: &mut ManagerClient, id: u64) -> anyhow::Result<pb::Migration> {
    Ok(client
        .get_migration(pb::GetMigrationRequest { id })
        .await
        .map_err(|s| call_error(&format!("get migration {id}"), s))?
        .into_inner())
}

async fn running_rebalance(client: &mut ManagerClient) -> anyhow::Result<u64> {
    let running = client
        .list_migrations(pb::ListMigrationsRequest {
            running_only: true,
            limit: 1_000,
        })
        .await
        .map_err(|s| call_error("list migrations", s))?
        .into_inner();
    match running.migrations.iter().find(|m| m.kind == "rebalance") {
        Some(m) => Ok(m.id),
        None => bail!("no rebalance is running"),
    }
}

async fn cancel(client: &mut ManagerClient, id: u64, json: bool) -> anyhow::Result<String> {
    let asked = client
        .cancel_migration(pb::GetMigrationRequest { id })
        .await
        .map_err(|s| call_error(&format!("cancel migration {id}"), s))?
        .into_inner();
    if json {
        return Ok(show(&asked, true));
    }
    Ok(format!(
        "asked migration {id} to stop; it rolls back unless its cutover is done \
         (gizzmo watch {id} follows it)\n"
    ))
}

async fn list(client: &mut ManagerClient, all: bool, json: bool) -> anyhow::Result<String> {
    let listed = client
        .list_migrations(pb::ListMigrationsRequest {
            running_only: !all,
            limit: 100,
        })
        .await
        .map_err(|s| call_error("list migrations", s))?
        .into_inner();
    if json {
        let items: Vec<Value> = listed.migrations.iter().map(to_json).collect();
        return Ok(render::pretty(&Value::Array(items)));
    }
    if listed.migrations.is_empty() {
        return Ok(if all {
            "no migrations\n".into()
        } else {
            "no migration is running (--all lists finished ones)\n".into()
        });
    }
    let rows = listed.migrations.iter().map(row).collect();
    Ok(render::table(
        &["ID", "KIND", "STATUS", "STEP", "PROGRESS", "WHAT"],
        &[0],
        rows,
    ))
}

fn row(m: &pb::Migration) -> Vec<String> {
    vec![
        if m.id == 0 {
            "-".into()
        } else {
            m.id.to_string()
        },
        m.kind.clone(),
        m.status.clone(),
        m.step.clone(),
        progress_text(m),
        m.description.clone(),
    ]
}

fn progress_text(m: &pb::Migration) -> String {
    match m.step.as_str() {
        "copy" => format!("{} / {} rows", m.rows_copied, m.rows_total),
        "diff" | "drain" => format!("{} rows compared", m.rows_compared),
        _ if m.rows_copied > 0 => format!("{} rows copied", m.rows_copied),
        _ => String::new(),
    }
}

/// Shows one migration (with a rebalance's moves).
fn show(m: &pb::Migration, json: bool) -> String {
    if json {
        return render::pretty(&to_json(m));
    }
    let mut text = String::new();
    let id = if m.id == 0 {
        "plan".into()
    } else {
        format!("migration {}", m.id)
    };
    text.push_str(&format!("{id}: {} [{}]\n", m.description, m.status));
    if !m.step.is_empty() && m.status == "running" {
        text.push_str(&format!("  step: {} {}\n", m.step, progress_text(m)));
    }
    if !m.note.is_empty() {
        text.push_str(&format!("  {}\n", m.note));
    }
    if m.differing > 0 || m.kind == "diff" || m.kind == "repair" {
        text.push_str(&format!(
            "  compared {} rows, {} keys differ{}\n",
            m.rows_compared,
            m.differing,
            if m.repaired > 0 {
                format!(", {} repaired", m.repaired)
            } else {
                String::new()
            }
        ));
        if !m.differing_keys.is_empty() {
            let keys = m.differing_keys.iter().map(u64::to_string);
            text.push_str(&format!(
                "  keys: {}\n",
                render::wrap_list(keys, "        ")
            ));
        }
    }
    if !m.error.is_empty() {
        text.push_str(&format!("  error: {}\n", m.error));
    }
    if !m.children.is_empty() {
        let rows = m.children.iter().map(row).collect();
        text.push_str(&render::table(
            &["ID", "KIND", "STATUS", "STEP", "PROGRESS", "WHAT"],
            &[0],
            rows,
        ));
    }
    text
}

fn to_json(m: &pb::Migration) -> Value {
    json!({
        "id": m.id,
        "parent_id": m.parent_id,
        "kind": m.kind,
        "description": m.description,
        "status": m.status,
        "step": m.step,
        "rows_copied": m.rows_copied,
        "resumes": m.resumes,
        "rows_total": m.rows_total,
        "rows_compared": m.rows_compared,
        "differing": m.differing,
        "differing_keys": m.differing_keys,
        "repaired": m.repaired,
        "note": m.note,
        "error": m.error,
        "cancel_requested": m.cancel_requested,
        "children": m.children.iter().map(to_json).collect::<Vec<_>>(),
    })
}

/// Follows migration `id` with a bar per migration (a rebalance's moves each get one) until
/// it ends; fails when it did not finish cleanly.
async fn watch(client: &mut ManagerClient, id: u64, json: bool) -> anyhow::Result<String> {
    let bars = MultiProgress::with_draw_target(ProgressDrawTarget::stderr());
    let style =
        ProgressStyle::with_template("{prefix:>14} [{bar:30}] {pos}/{len} rows {per_sec} {msg}")
            .context("progress bar template")?
            .progress_chars("=> ");
    let mut shown: Vec<(u64, ProgressBar)> = Vec::new();
    let last = loop {
        let m = get(client, id).await?;
        let items: Vec<&pb::Migration> = if m.children.is_empty() {
            vec![&m]
        } else {
            m.children.iter().filter(|c| c.id != 0).collect()
        };
        for item in items {
            let bar = match shown.iter().find(|(i, _)| *i == item.id) {
                Some((_, bar)) => bar.clone(),
                None => {
                    let bar = bars.add(ProgressBar::new(0).with_style(style.clone()));
                    bar.set_prefix(format!("{} {}", item.kind, item.id));
                    shown.push((item.id, bar.clone()));
                    bar
                }
            };
            bar.set_length(item.rows_total.max(item.rows_copied));
            bar.set_position(item.rows_copied);
            let message = match item.note.as_str() {
                "" => format!("{} {}", item.step, item.status),
                note => format!("{}: {}", item.step, render::truncate(note, 100)),
            };
            bar.set_message(message);
            if item.status != "running" && !bar.is_finished() {
                bar.finish_with_message(item.status.clone());
            }
        }
        if m.status != "running" {
            break m;
        }
        tokio::time::sleep(WATCH_EVERY).await;
    };
    bars.clear().ok();
    let text = show(&last, json);
    if last.status != "done" || (last.kind == "diff" && last.differing > 0) {
        bail!("{}", text.trim_end());
    }
    Ok(text)
}
