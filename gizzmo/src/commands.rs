//! What each `gizzmo` command does: one or two calls to the admin service, and the output.
//! Changes are built client-side from a `Dump` and sent as one `Apply`.

use std::{collections::BTreeMap, io::Write, time::Duration};

use anyhow::{Context, bail};
use gizzard::{
    manager::convert::change_to_pb,
    nameserver::{Change, Forwarding, Host, Link, NodeSpec, RoutingSnapshot, ShardId, ShardInfo},
};
use proto::gizzard::v1 as pb;
use serde_json::{Value, json};

use super::{
    Command, CreateTableArgs, JobFilterArgs, JobStateArg, JobsCommand, PriorityArg,
    client::{self, ManagerClient, call_error},
    plan, render,
};

/// The flags every command shares.
#[derive(Debug)]
pub struct Global {
    pub addr: String,
    pub token: Option<String>,
    pub json: bool,
    pub timeout: Duration,
    pub tls: edge::client::ClientTls,
}

impl Global {
    async fn connect(&self) -> anyhow::Result<ManagerClient> {
        client::connect(&self.addr, &self.tls, self.token.as_deref(), self.timeout).await
    }
}

/// Runs `command`, writing its output to `out`.
pub async fn run(global: &Global, command: Command, out: &mut dyn Write) -> anyhow::Result<()> {
    let text = match command {
        Command::Ping { addrs } => return ping(global, addrs, out).await,
        command => execute(global, command).await?,
    };
    out.write_all(text.as_bytes()).context("write the output")?;
    Ok(())
}

/// Runs every command but `ping`, returning what to print.
async fn execute(global: &Global, command: Command) -> anyhow::Result<String> {
    let mut client = global.connect().await?;
    let json = global.json;
    Ok(match command {
        Command::Hosts => hosts(&dump(&mut client).await?, json),
        Command::Tables => tables(&dump(&mut client).await?, json),
        Command::Forwardings { table } => forwardings(&dump(&mut client).await?, table, json),
        Command::Shards { host } => shards(&dump(&mut client).await?, host.as_deref(), json),
        Command::Tree {
            table: Some(table), ..
        } => table_trees(&mut client, table, json).await?,
        Command::Tree {
            shard: Some(shard), ..
        } => {
            let request = pb::TreeRequest {
                shard_id: shard.to_string(),
            };
            let tree = client
                .tree(request)
                .await
                .map_err(|s| call_error("get tree", s))?;
            let tree = tree.into_inner();
            if json {
                pretty(&render::tree_json(&tree))
            } else {
                render::tree(&tree)
            }
        }
        Command::Tree { .. } => bail!("name a table or pass --shard"),
        Command::Lookup { table, key } => lookup(&mut client, table, key, json).await?,
        Command::Reload => {
            let v = client
                .reload(pb::ReloadRequest {})
                .await
                .map_err(|s| call_error("reload", s))?
                .into_inner();
            if json {
                pretty(&version_json(&v))
            } else {
                format!("server {} routes version {}\n", v.server, v.routing_version)
            }
        }
        Command::Servers => servers(&mut client, json).await?,
        Command::Retired => retired(&mut client, json).await?,
        Command::Sweeps => sweeps(&mut client, json).await?,
        Command::Jobs(command) => jobs(&mut client, command, json).await?,
        Command::Migration(command) => super::migrations::run(&mut client, command, json).await?,
        change => {
            let topology = plan::topology_from_pb(dump(&mut client).await?)?;
            let (summary, changes) = changes(&topology, change)?;
            let version = apply(&mut client, &changes).await?;
            if json {
                pretty(&json!({ "version": version, "changes": changes.len() }))
            } else {
                format!("{summary}: version {version}\n")
            }
        }
    })
}

/// Returns a summary and the batch of changes of a command that edits the topology.
fn changes(
    topology: &gizzard::nameserver::Topology,
    command: Command,
) -> anyhow::Result<(String, Vec<Change>)> {
    let busy = |shard: ShardId, busy: bool| Change::SetBusy { id: shard, busy };
    let one = |summary: String, change: Change| -> anyhow::Result<(String, Vec<Change>)> {
        let changes = vec![change];
        plan::check(topology, &changes)?;
        Ok((summary, changes))
    };
    match command {
        Command::CreateTable(args) => create_table(topology, args),
        Command::AddHost {
            name,
            url,
            read_weight,
            write_weight,
            force,
        } => {
            let verb = if topology.hosts.contains_key(&name) {
                "updated"
            } else {
                "added"
            };
            let host = Host {
                name: name.clone(),
                url,
                read_weight,
                write_weight,
            };
            let change = if force {
                Change::RepointHost(host)
            } else {
                Change::SetHost(host)
            };
            one(format!("{verb} host {name}"), change)
        }
        Command::RemoveHost { name } => {
            let held: Vec<String> = topology
                .shards
                .keys()
                .filter(|id| id.hostname == name)
                .map(ShardId::to_string)
                .collect();
            if !held.is_empty() {
                bail!(
                    "host {name} still holds {} shard(s) ({}); move or delete them first",
                    held.len(),
                    render::truncate(&held.join(", "), 200)
                );
            }
            one(format!("removed host {name}"), Change::RemoveHost(name))
        }
        Command::CreateShard { id, class } => {
            let info = ShardInfo {
                id: id.clone(),
                class_name: class.clone(),
                busy: false,
            };
            one(
                format!("created shard {id} ({class})"),
                Change::CreateShard(info),
            )
        }
        Command::DeleteShard { id } => one(format!("deleted shard {id}"), Change::DeleteShard(id)),
        Command::Link { up, down, weight } => {
            let summary = format!("linked {down} under {up} (weight {weight})");
            one(summary, Change::AddLink(Link { up, down, weight }))
        }
        Command::Unlink { up, down } => one(
            format!("unlinked {down} from {up}"),
            Change::RemoveLink { up, down },
        ),
        Command::Wrap { wrapper, shard, id } => {
            let id = match id {
                Some(id) => id,
                None => plan::wrapper_id(wrapper, &shard)?,
            };
            let changes = plan::wrap(topology, wrapper, &shard, &id)?;
            Ok((
                format!("wrapped {shard} in {} {id}", wrapper.class_name()),
                changes,
            ))
        }
        Command::Unwrap { shard } => {
            let (child, changes) = plan::unwrap(topology, &shard)?;
            Ok((
                format!("removed wrapper {shard}, {child} took its place"),
                changes,
            ))
        }
        Command::SetForwarding {
            table,
            base_id,
            shard,
        } => {
            let summary = format!("table {table} from base id {base_id} now routes to {shard}");
            let forwarding = Forwarding {
                table_id: table,
                base_id,
                shard_id: shard,
            };
            one(summary, Change::SetForwarding(forwarding))
        }
        Command::RemoveForwarding { table, base_id } => one(
            format!("removed the forwarding of table {table} at base id {base_id}"),
            Change::RemoveForwarding {
                table_id: table,
                base_id,
            },
        ),
        Command::MarkBusy { shard } => one(format!("marked {shard} busy"), busy(shard, true)),
        Command::MarkIdle { shard } => one(format!("marked {shard} idle"), busy(shard, false)),
        Command::RemoveReplica { shard } => Ok((
            format!("removed replica {shard}"),
            plan::remove_replica(topology, &shard)?,
        )),
        other => bail!("{other:?} changes nothing"),
    }
}

fn create_table(
    topology: &gizzard::nameserver::Topology,
    args: CreateTableArgs,
) -> anyhow::Result<(String, Vec<Change>)> {
    let spec = plan::TableSpec {
        table_id: args.table,
        shards: args.shards,
        prefix: args.prefix.unwrap_or_else(|| format!("t{}", args.table)),
        replicas: args.replicas,
        class_name: args.class,
    };
    let changes = plan::create_table(topology, &spec)?;
    let summary = format!(
        "created table {} with {} forwarding(s), each a ReplicatingShard over {} {} replica(s)",
        spec.table_id,
        spec.shards,
        spec.replicas.len(),
        spec.class_name
    );
    Ok((summary, changes))
}

async fn dump(client: &mut ManagerClient) -> anyhow::Result<pb::Topology> {
    let topology = client
        .dump(pb::DumpRequest {})
        .await
        .map_err(|s| call_error("dump the topology", s))?;
    Ok(topology.into_inner())
}

/// Sends `changes` as one batch and returns the new version.
async fn apply(client: &mut ManagerClient, changes: &[Change]) -> anyhow::Result<u64> {
    let request = pb::ApplyRequest {
        changes: changes.iter().map(change_to_pb).collect(),
    };
    let response = client
        .apply(request)
        .await
        .map_err(|s| call_error("apply the changes", s))?;
    Ok(response.into_inner().version)
}

fn pretty(value: &Value) -> String {
    render::pretty(value)
}

fn hosts(topology: &pb::Topology, json: bool) -> String {
    if json {
        let hosts: Vec<Value> = topology
            .hosts
            .iter()
            .map(|h| {
                json!({
                    "name": h.name,
                    "url": db::text::redact(&h.url),
                    "read_weight": h.read_weight,
                    "write_weight": h.write_weight,
                })
            })
            .collect();
        return pretty(&Value::Array(hosts));
    }
    let rows = topology
        .hosts
        .iter()
        .map(|h| {
            vec![
                h.name.clone(),
                db::text::redact(&h.url).into_owned(),
                h.read_weight.to_string(),
                h.write_weight.to_string(),
            ]
        })
        .collect();
    render::table(
        &["NAME", "URL", "READ WEIGHT", "WRITE WEIGHT"],
        &[2, 3],
        rows,
    )
}

fn tables(topology: &pb::Topology, json: bool) -> String {
    let mut counts: BTreeMap<i32, usize> = BTreeMap::new();
    for f in &topology.forwardings {
        *counts.entry(f.table_id).or_default() += 1;
    }
    if json {
        let tables: Vec<Value> = counts
            .iter()
            .map(|(table, count)| json!({ "table_id": table, "forwardings": count }))
            .collect();
        return pretty(&Value::Array(tables));
    }
    let rows = counts
        .iter()
        .map(|(t, c)| vec![t.to_string(), c.to_string()])
        .collect();
    render::table(&["TABLE", "FORWARDINGS"], &[0, 1], rows)
}

fn forwardings(topology: &pb::Topology, table: Option<i32>, json: bool) -> String {
    let mut list: Vec<&pb::Forwarding> = topology
        .forwardings
        .iter()
        .filter(|f| table.is_none_or(|t| f.table_id == t))
        .collect();
    list.sort_by_key(|f| (f.table_id, f.base_id));
    if json {
        let list: Vec<Value> = list
            .iter()
            .map(
                |f| json!({ "table_id": f.table_id, "base_id": f.base_id, "shard_id": f.shard_id }),
            )
            .collect();
        return pretty(&Value::Array(list));
    }
    let rows = list
        .iter()
        .map(|f| {
            vec![
                f.table_id.to_string(),
                f.base_id.to_string(),
                render::hex(f.base_id),
                f.shard_id.clone(),
            ]
        })
        .collect();
    render::table(
        &["TABLE", "BASE ID", "BASE ID (HEX)", "SHARD"],
        &[0, 1],
        rows,
    )
}

fn shards(topology: &pb::Topology, host: Option<&str>, json: bool) -> String {
    let mut children: BTreeMap<&str, usize> = BTreeMap::new();
    let mut parents: BTreeMap<&str, usize> = BTreeMap::new();
    for link in &topology.links {
        *children.entry(&link.up).or_default() += 1;
        *parents.entry(&link.down).or_default() += 1;
    }
    let mut list: Vec<&pb::Shard> = topology
        .shards
        .iter()
        .filter(|s| host.is_none_or(|h| s.id.split_once('/').is_some_and(|(sh, _)| sh == h)))
        .collect();
    list.sort_by(|a, b| a.id.cmp(&b.id));
    let count = |map: &BTreeMap<&str, usize>, id: &str| map.get(id).copied().unwrap_or(0);
    if json {
        let list: Vec<Value> = list
            .iter()
            .map(|s| {
                json!({
                    "id": s.id,
                    "class_name": s.class_name,
                    "busy": s.busy,
                    "parents": count(&parents, &s.id),
                    "children": count(&children, &s.id),
                })
            })
            .collect();
        return pretty(&Value::Array(list));
    }
    let rows = list
        .iter()
        .map(|s| {
            vec![
                s.id.clone(),
                s.class_name.clone(),
                if s.busy { "busy".into() } else { "-".into() },
                count(&parents, &s.id).to_string(),
                count(&children, &s.id).to_string(),
            ]
        })
        .collect();
    render::table(
        &["SHARD", "CLASS", "BUSY", "PARENTS", "CHILDREN"],
        &[3, 4],
        rows,
    )
}

/// Draws every forwarding of `table` from one dump, so all trees are of one version.
async fn table_trees(client: &mut ManagerClient, table: i32, json: bool) -> anyhow::Result<String> {
    let topology = plan::topology_from_pb(dump(client).await?)?;
    let forwardings: Vec<Forwarding> = topology.table_forwardings(table).collect();
    if forwardings.is_empty() {
        bail!("table {table} has no forwardings");
    }
    let snapshot = RoutingSnapshot::new(topology);
    let mut trees = Vec::with_capacity(forwardings.len());
    for f in &forwardings {
        let spec = snapshot
            .tree(&f.shard_id)
            .with_context(|| format!("draw the tree of table {table} at base id {}", f.base_id))?;
        trees.push((f, tree_to_pb(&spec, 0)));
    }
    if json {
        let list: Vec<Value> = trees
            .iter()
            .map(|(f, tree)| {
                json!({ "table_id": table, "base_id": f.base_id, "tree": render::tree_json(tree) })
            })
            .collect();
        return Ok(pretty(&Value::Array(list)));
    }
    let mut text = String::new();
    for (i, (f, tree)) in trees.iter().enumerate() {
        if i > 0 {
            text.push('\n');
        }
        text.push_str(&format!(
            "table {table} from base id {} ({}):\n",
            f.base_id,
            render::hex(f.base_id)
        ));
        text.push_str(&render::tree(tree));
    }
    Ok(text)
}

fn tree_to_pb(spec: &NodeSpec, weight: u32) -> pb::TreeNode {
    gizzard::manager::convert::tree_to_pb(spec, weight)
}

async fn lookup(
    client: &mut ManagerClient,
    table: i32,
    key: u64,
    json: bool,
) -> anyhow::Result<String> {
    let request = pb::LookupRequest {
        table_id: table,
        key,
    };
    let response = client
        .lookup(request)
        .await
        .map_err(|s| call_error(&format!("look up key {key} of table {table}"), s))?
        .into_inner();
    let forwarding = response.forwarding.unwrap_or_default();
    let tree = response.tree.unwrap_or_default();
    if json {
        return Ok(pretty(&json!({
            "table_id": table,
            "key": key,
            "hash": response.hash,
            "base_id": forwarding.base_id,
            "shard_id": forwarding.shard_id,
            "tree": render::tree_json(&tree),
        })));
    }
    Ok(format!(
        "key {key} of table {table}: hash {} ({})\nforwarding: base id {} ({}) -> {}\n{}",
        response.hash,
        render::hex(response.hash),
        forwarding.base_id,
        render::hex(forwarding.base_id),
        forwarding.shard_id,
        render::tree(&tree)
    ))
}

fn version_json(v: &pb::GetVersionResponse) -> Value {
    json!({
        "server": v.server,
        "server_id": v.server_id,
        "stored_version": v.stored_version,
        "routing_version": v.routing_version,
        "lease_valid": v.lease_valid,
        "confirmed_age_ms": v.confirmed_age_ms,
    })
}

/// Seconds with one decimal, for ages and times left.
fn seconds(ms: u64) -> String {
    format!("{:.1}s", ms as f64 / 1000.0)
}

async fn list_servers(client: &mut ManagerClient) -> anyhow::Result<pb::ListServersResponse> {
    Ok(client
        .list_servers(pb::ListServersRequest {})
        .await
        .map_err(|s| call_error("list the servers", s))?
        .into_inner())
}

async fn servers(client: &mut ManagerClient, json: bool) -> anyhow::Result<String> {
    let list = list_servers(client).await?;
    let status = |s: &pb::Server| {
        if s.stale {
            "stale"
        } else if s.version < list.stored_version {
            "behind"
        } else {
            "ok"
        }
    };
    if json {
        let servers: Vec<Value> = list
            .servers
            .iter()
            .map(|s| {
                json!({
                    "id": s.id, "name": s.name, "address": s.address, "version": s.version,
                    "confirmed_age_ms": s.confirmed_age_ms, "lease_ms": s.lease_ms,
                    "stale": s.stale, "status": status(s),
                })
            })
            .collect();
        return Ok(pretty(
            &json!({ "stored_version": list.stored_version, "servers": servers }),
        ));
    }
    let rows = list
        .servers
        .iter()
        .map(|s| {
            vec![
                s.id.clone(),
                s.address.clone(),
                s.version.to_string(),
                format!("{} ago", seconds(s.confirmed_age_ms)),
                seconds(s.lease_ms),
                status(s).into(),
            ]
        })
        .collect();
    Ok(format!(
        "nameserver version {}\n{}",
        list.stored_version,
        render::table(
            &[
                "SERVER",
                "ADDRESS",
                "VERSION",
                "CONFIRMED",
                "LEASE",
                "STATUS"
            ],
            &[2, 3, 4],
            rows,
        )
    ))
}

async fn sweeps(client: &mut ManagerClient, json: bool) -> anyhow::Result<String> {
    let sweeps = client
        .list_sweeps(pb::ListSweepsRequest {})
        .await
        .map_err(|s| call_error("list anti-entropy sweeps", s))?
        .into_inner()
        .sweeps;
    if json {
        let sweeps: Vec<Value> = sweeps
            .iter()
            .map(|s| {
                json!({
                    "a": s.a, "b": s.b, "last_full_age_ms": s.last_full_age_ms,
                    "last_repaired": s.last_repaired, "running": s.running,
                    "rows_compared": s.rows_compared, "keys_repaired": s.keys_repaired,
                    "total_repaired": s.total_repaired,
                })
            })
            .collect();
        return Ok(pretty(&json!(sweeps)));
    }
    if sweeps.is_empty() {
        return Ok("no replica pairs to sweep (or anti-entropy is off)\n".into());
    }
    let rows = sweeps
        .iter()
        .map(|s| {
            let now = if s.running {
                format!("{} rows, {} repaired", s.rows_compared, s.keys_repaired)
            } else {
                "-".into()
            };
            vec![
                format!("{} / {}", s.a, s.b),
                format!("{} ago", seconds(s.last_full_age_ms)),
                s.last_repaired.to_string(),
                s.total_repaired.to_string(),
                now,
            ]
        })
        .collect();
    Ok(render::table(
        &["PAIR", "LAST FULL SWEEP", "REPAIRED", "IN ALL", "RUNNING"],
        &[2, 3],
        rows,
    ))
}

async fn retired(client: &mut ManagerClient, json: bool) -> anyhow::Result<String> {
    let shards = client
        .list_retired(pb::ListRetiredRequest {})
        .await
        .map_err(|s| call_error("list retired shards", s))?
        .into_inner()
        .shards;
    let state = |r: &pb::RetiredShard| {
        if r.fenced_prefix.is_empty() {
            "waiting for every server to stop routing to it".to_owned()
        } else {
            format!(
                "fenced as {}; dropped in {}",
                r.fenced_prefix,
                seconds(r.drop_in_ms)
            )
        }
    };
    if json {
        let shards: Vec<Value> = shards
            .iter()
            .map(|r| {
                json!({
                    "shard_id": r.shard_id, "class_name": r.class_name,
                    "retired_version": r.retired_version,
                    "fenced_prefix": (!r.fenced_prefix.is_empty()).then_some(&r.fenced_prefix),
                    "drop_in_ms": r.drop_in_ms,
                })
            })
            .collect();
        return Ok(pretty(&json!(shards)));
    }
    if shards.is_empty() {
        return Ok("no retired shards wait to be fenced or dropped\n".into());
    }
    let rows = shards
        .iter()
        .map(|r| {
            vec![
                r.shard_id.clone(),
                r.class_name.clone(),
                r.retired_version.to_string(),
                state(r),
            ]
        })
        .collect();
    Ok(render::table(
        &["SHARD", "CLASS", "RETIRED AT", "STATE"],
        &[2],
        rows,
    ))
}

/// Asks every server (by default, every one in the registry) for its versions at once,
/// prints them, and fails when any is unreachable, when they route different versions, when
/// one routes behind the store, or when one's routing lease has lapsed.
async fn ping(global: &Global, addrs: Vec<String>, out: &mut dyn Write) -> anyhow::Result<()> {
    let addrs = if addrs.is_empty() {
        let mut client = global.connect().await?;
        // A server restarted on its old address is registered twice, once as stale.
        let registered: Vec<String> = list_servers(&mut client)
            .await?
            .servers
            .into_iter()
            .map(|s| s.address)
            .filter(|a| !a.is_empty())
            .collect::<std::collections::BTreeSet<_>>()
            .into_iter()
            .collect();
        if registered.is_empty() {
            vec![global.addr.clone()]
        } else {
            registered
        }
    } else {
        addrs
    };
    let answers = futures::future::join_all(addrs.iter().map(|addr| async move {
        let mut client =
            client::connect(addr, &global.tls, global.token.as_deref(), global.timeout).await?;
        let version = client
            .get_version(pb::GetVersionRequest {})
            .await
            .map_err(|s| call_error("get the version", s))?;
        anyhow::Ok(version.into_inner())
    }))
    .await;
    let mut problems = Vec::new();
    let mut routing: BTreeMap<u64, Vec<&str>> = BTreeMap::new();
    for (addr, answer) in addrs.iter().zip(&answers) {
        match answer {
            Ok(v) => {
                routing.entry(v.routing_version).or_default().push(addr);
                if !v.lease_valid {
                    problems.push(format!(
                        "{addr} cannot confirm its routing (last confirmed {} ago): it refuses writes",
                        seconds(v.confirmed_age_ms)
                    ));
                }
                if v.routing_version < v.stored_version {
                    problems.push(format!(
                        "{addr} routes version {} behind the stored version {}",
                        v.routing_version, v.stored_version
                    ));
                }
            }
            Err(err) => problems.push(format!(
                "{addr} did not answer: {}",
                daemon::error_chain(err.as_ref())
            )),
        }
    }
    if routing.len() > 1 {
        let versions: Vec<String> = routing
            .iter()
            .map(|(version, addrs)| format!("{} route version {version}", addrs.join(", ")))
            .collect();
        problems.insert(
            0,
            format!("servers route different versions: {}", versions.join("; ")),
        );
    }
    let text = if global.json {
        let servers: Vec<Value> = addrs
            .iter()
            .zip(&answers)
            .map(|(addr, answer)| match answer {
                Ok(v) => {
                    let mut value = version_json(v);
                    value["addr"] = json!(addr);
                    value
                }
                Err(err) => json!({ "addr": addr, "error": daemon::error_chain(err.as_ref()) }),
            })
            .collect();
        pretty(&json!({ "agree": problems.is_empty(), "servers": servers }))
    } else {
        let rows = addrs
            .iter()
            .zip(&answers)
            .map(|(addr, answer)| match answer {
                Ok(v) => {
                    let status = if !v.lease_valid {
                        "unconfirmed"
                    } else if v.routing_version < v.stored_version {
                        "behind"
                    } else if routing.len() > 1 {
                        "differs"
                    } else {
                        "ok"
                    };
                    vec![
                        addr.clone(),
                        v.server.clone(),
                        v.stored_version.to_string(),
                        v.routing_version.to_string(),
                        status.into(),
                    ]
                }
                Err(_) => {
                    vec![
                        addr.clone(),
                        "-".into(),
                        "-".into(),
                        "-".into(),
                        "unreachable".into(),
                    ]
                }
            })
            .collect();
        render::table(
            &["ADDRESS", "SERVER", "STORED", "ROUTING", "STATUS"],
            &[2, 3],
            rows,
        )
    };
    out.write_all(text.as_bytes()).context("write the output")?;
    if !problems.is_empty() {
        bail!("{}", problems.join("; "));
    }
    Ok(())
}

async fn jobs(
    client: &mut ManagerClient,
    command: JobsCommand,
    json: bool,
) -> anyhow::Result<String> {
    let state = |s: Option<JobStateArg>| s.map_or(0, |s| s.to_pb() as i32);
    let priority = |p: Option<PriorityArg>| p.map_or(0, |p| p.to_pb() as i32);
    match command {
        JobsCommand::List {
            filter:
                JobFilterArgs {
                    state: s,
                    priority: p,
                    shard,
                },
            limit,
        } => {
            let request = pb::ListJobsRequest {
                state: state(s),
                priority: priority(p),
                shard: shard.unwrap_or_default(),
                limit,
            };
            let jobs = client
                .list_jobs(request)
                .await
                .map_err(|s| call_error("list jobs", s))?
                .into_inner()
                .jobs;
            Ok(job_list(&jobs, json))
        }
        JobsCommand::Retry { ids } => {
            let all = ids.is_empty();
            let count = client
                .retry_jobs(pb::RetryJobsRequest { ids })
                .await
                .map_err(|s| call_error("retry jobs", s))?
                .into_inner()
                .count;
            Ok(if json {
                pretty(&json!({ "retried": count }))
            } else if all {
                format!("retried {count} bad job(s)\n")
            } else {
                format!("retried {count} job(s)\n")
            })
        }
        JobsCommand::Purge {
            ids,
            filter:
                JobFilterArgs {
                    state: s,
                    priority: p,
                    shard,
                },
        } => {
            let request = pb::PurgeJobsRequest {
                ids,
                state: state(s),
                priority: priority(p),
                shard: shard.unwrap_or_default(),
            };
            let count = client
                .purge_jobs(request)
                .await
                .map_err(|s| call_error("purge jobs", s))?
                .into_inner()
                .count;
            Ok(if json {
                pretty(&json!({ "purged": count }))
            } else {
                format!("purged {count} job(s)\n")
            })
        }
        JobsCommand::Pause { priority: p } => {
            let request = pb::QueueControlRequest {
                priority: priority(p),
            };
            let status = client
                .pause_jobs(request)
                .await
                .map_err(|s| call_error("pause jobs", s))?;
            Ok(queue_status(&status.into_inner(), json))
        }
        JobsCommand::Resume { priority: p } => {
            let request = pb::QueueControlRequest {
                priority: priority(p),
            };
            let status = client
                .resume_jobs(request)
                .await
                .map_err(|s| call_error("resume jobs", s))?;
            Ok(queue_status(&status.into_inner(), json))
        }
        JobsCommand::Status => {
            let status = client
                .get_queue_status(pb::QueueStatusRequest {})
                .await
                .map_err(|s| call_error("get the queue status", s))?;
            Ok(queue_status(&status.into_inner(), json))
        }
    }
}

fn job_list(jobs: &[pb::Job], json: bool) -> String {
    if json {
        let list: Vec<Value> = jobs
            .iter()
            .map(|j| {
                json!({
                    "id": j.id,
                    "priority": render::priority(j.priority),
                    "state": render::job_state(j.state),
                    "job_type": j.job_type,
                    "shard": j.shard,
                    "attempts": j.attempts,
                    "last_error": j.last_error,
                    "run_after_ms": j.run_after_ms,
                    "created_at_ms": j.created_at_ms,
                })
            })
            .collect();
        return pretty(&Value::Array(list));
    }
    let rows = jobs
        .iter()
        .map(|j| {
            vec![
                j.id.to_string(),
                render::priority(j.priority),
                render::job_state(j.state),
                j.job_type.clone(),
                if j.shard.is_empty() {
                    "-".into()
                } else {
                    j.shard.clone()
                },
                j.attempts.to_string(),
                render::relative_ms(j.run_after_ms),
                render::truncate(&j.last_error, 60),
            ]
        })
        .collect();
    let header = [
        "ID",
        "PRIORITY",
        "STATE",
        "TYPE",
        "SHARD",
        "ATTEMPTS",
        "RUN",
        "LAST ERROR",
    ];
    render::table(&header, &[0, 5], rows)
}

fn queue_status(status: &pb::QueueStatus, json: bool) -> String {
    let all = [pb::Priority::High, pb::Priority::Low, pb::Priority::Copy];
    let depth = |p: pb::Priority, s: pb::JobState| {
        status
            .depth
            .iter()
            .filter(|d| d.priority == p as i32 && d.state == s as i32)
            .map(|d| d.count)
            .sum::<u64>()
    };
    let paused = |p: pb::Priority| status.paused.contains(&(p as i32));
    if json {
        let list: Vec<Value> = all
            .iter()
            .map(|&p| {
                json!({
                    "priority": render::priority(p as i32),
                    "ready": depth(p, pb::JobState::Ready),
                    "bad": depth(p, pb::JobState::Bad),
                    "paused": paused(p),
                })
            })
            .collect();
        return pretty(&Value::Array(list));
    }
    let rows = all
        .iter()
        .map(|&p| {
            vec![
                render::priority(p as i32),
                depth(p, pb::JobState::Ready).to_string(),
                depth(p, pb::JobState::Bad).to_string(),
                if paused(p) {
                    "paused".into()
                } else {
                    "running".into()
                },
            ]
        })
        .collect();
    render::table(&["PRIORITY", "READY", "BAD", "WORKERS"], &[1, 2], rows)
}
