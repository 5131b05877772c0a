//! What `gizzmo` prints: aligned tables, shard trees drawn with box-drawing characters, long
//! lists wrapped to the width of a terminal, and the JSON forms of the same things for
//! `--json`.
//!
//! JSON output writes every integer as a decimal string, as the protobuf JSON mapping writes
//! 64-bit integers: ids, keys and hashes above 2^53 would be rounded by JavaScript and some
//! jq builds if they were numbers. Parse them with `tonumber` (jq) or `BigInt`.

use std::time::{SystemTime, UNIX_EPOCH};

use comfy_table::{CellAlignment, Table, presets};
use proto::gizzard::v1 as pb;
use serde_json::{Value, json};

/// The width long lists are wrapped to.
pub const WIDTH: usize = 100;

/// Returns `value` as pretty-printed JSON text ending in a newline, every integer written as
/// a string (see the module doc).
pub fn pretty(value: &Value) -> String {
    // Serializing a `Value` cannot fail.
    let mut text = serde_json::to_string_pretty(&integers_as_strings(value)).unwrap_or_default();
    text.push('\n');
    text
}

/// Returns `value` with every integer replaced by its decimal string.
pub fn integers_as_strings(value: &Value) -> Value {
    match value {
        Value::Number(n) if n.is_u64() || n.is_i64() => Value::String(n.to_string()),
        Value::Array(items) => Value::Array(items.iter().map(integers_as_strings).collect()),
        Value::Object(fields) => Value::Object(
            fields
                .iter()
                .map(|(k, v)| (k.clone(), integers_as_strings(v)))
                .collect(),
        ),
        other => other.clone(),
    }
}

/// Returns `items` separated by `, ` in lines of at most [`WIDTH`] columns (one item longer
/// than that gets a line of its own), each line after the first starting with `indent`.
pub fn wrap_list<I: IntoIterator<Item = String>>(items: I, indent: &str) -> String {
    let mut text = String::new();
    let mut line_len = 0;
    for (n, item) in items.into_iter().enumerate() {
        if n > 0 {
            text.push(',');
            line_len += 1;
            if line_len + 1 + item.len() > WIDTH {
                text.push('\n');
                text.push_str(indent);
                line_len = indent.len();
            } else {
                text.push(' ');
                line_len += 1;
            }
        }
        line_len += item.len();
        text.push_str(&item);
    }
    text
}

/// Returns an aligned table with `header`; columns listed in `right` are right-aligned.
pub fn table(header: &[&str], right: &[usize], rows: Vec<Vec<String>>) -> String {
    let mut table = Table::new();
    table
        .load_style(presets::NOTHING)
        .set_header(header.to_vec());
    for row in rows {
        table.add_row(row);
    }
    for &column in right {
        if let Some(column) = table.column_mut(column) {
            column.set_cell_alignment(CellAlignment::Right);
        }
    }
    // The preset pads every cell by one space: drop the margin and the trailing blanks.
    let mut text = String::new();
    for line in table.lines() {
        text.push_str(line.strip_prefix(' ').unwrap_or(&line).trim_end());
        text.push('\n');
    }
    text
}

/// Returns a base id (or hash) in hex, 15 digits: the 60-bit hash space.
pub fn hex(value: i64) -> String {
    format!("{value:#017x}")
}

/// Draws the tree under `root`, one node a line: `class id (weight w)`, busy nodes marked.
/// The root has no link above it, so no weight.
pub fn tree(root: &pb::TreeNode) -> String {
    let mut text = label(root, false);
    text.push('\n');
    children(&root.children, "", &mut text);
    text
}

fn children(nodes: &[pb::TreeNode], indent: &str, text: &mut String) {
    for (i, node) in nodes.iter().enumerate() {
        let last = i + 1 == nodes.len();
        text.push_str(indent);
        text.push_str(if last { "└── " } else { "├── " });
        text.push_str(&label(node, true));
        text.push('\n');
        let indent = format!("{indent}{}", if last { "    " } else { "│   " });
        children(&node.children, &indent, text);
    }
}

fn label(node: &pb::TreeNode, weighted: bool) -> String {
    let mut text = format!("{} {}", node.class_name, node.id);
    if weighted {
        text.push_str(&format!(" (weight {})", node.weight));
    }
    if node.busy {
        text.push_str(" [busy]");
    }
    text
}

/// Returns the JSON form of a tree.
pub fn tree_json(node: &pb::TreeNode) -> Value {
    json!({
        "id": node.id,
        "class_name": node.class_name,
        "busy": node.busy,
        "weight": node.weight,
        "children": node.children.iter().map(tree_json).collect::<Vec<_>>(),
    })
}

/// Returns the name of a priority as the flags spell it.
pub fn priority(value: i32) -> String {
    match pb::Priority::try_from(value) {
        Ok(pb::Priority::High) => "high".into(),
        Ok(pb::Priority::Low) => "low".into(),
        Ok(pb::Priority::Copy) => "copy".into(),
        _ => format!("unknown ({value})"),
    }
}

/// Returns the name of a job state as the flags spell it.
pub fn job_state(value: i32) -> String {
    match pb::JobState::try_from(value) {
        Ok(pb::JobState::Ready) => "ready".into(),
        Ok(pb::JobState::Bad) => "bad".into(),
        _ => format!("unknown ({value})"),
    }
}

/// Returns a time in milliseconds since the epoch relative to now: `in 5s`, `12s ago`, `now`.
pub fn relative_ms(at_ms: i64) -> String {
    let now = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| i64::try_from(d.as_millis()).unwrap_or(i64::MAX));
    let delta = at_ms.saturating_sub(now);
    let seconds = delta.unsigned_abs() / 1000;
    let text = match seconds {
        0 => return "now".into(),
        s if s < 120 => format!("{s}s"),
        s if s < 7_200 => format!("{}m", s / 60),
        s if s < 172_800 => format!("{}h", s / 3_600),
        s => format!("{}d", s / 86_400),
    };
    if delta > 0 {
        format!("in {text}")
    } else {
        format!("{text} ago")
    }
}

/// Returns `text` cut to `max` characters, marking the cut.
pub fn truncate(text: &str, max: usize) -> String {
    if text.chars().count() <= max {
        return text.to_owned();
    }
    let mut cut: String = text.chars().take(max.saturating_sub(1)).collect();
    cut.push('…');
    cut
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn json_integers_are_strings_and_round_trip() {
        let big = (1u64 << 60) + 1;
        let text = pretty(&json!({ "id": big, "n": -3, "w": 0.5, "ok": true, "keys": [1, 2] }));
        let back: Value = serde_json::from_str(&text).expect("json");
        assert_eq!(back["id"], big.to_string());
        assert_eq!(back["n"], "-3");
        assert_eq!(back["w"], 0.5);
        assert_eq!(back["ok"], true);
        assert_eq!(back["keys"], json!(["1", "2"]));
    }

    #[test]
    fn long_lists_wrap() {
        let keys = (0..1000u64).map(|k| (k << 50).to_string());
        let text = wrap_list(keys, "    ");
        let lines: Vec<&str> = text.lines().collect();
        assert!(lines.len() > 100, "{} lines", lines.len());
        assert!(lines.iter().all(|l| l.len() <= WIDTH), "{text}");
        assert!(lines[1..].iter().all(|l| l.starts_with("    ")));
        let items: Vec<&str> = text.split(',').map(str::trim).collect();
        assert_eq!(items.len(), 1000);
        assert_eq!(items[999], (999u64 << 50).to_string());
        assert_eq!(wrap_list(["a".to_owned()], "  "), "a");
    }

    fn node(class: &str, id: &str, weight: u32, children: Vec<pb::TreeNode>) -> pb::TreeNode {
        pb::TreeNode {
            id: id.into(),
            class_name: class.into(),
            busy: false,
            weight,
            children,
        }
    }

    #[test]
    fn trees_are_drawn_with_box_drawing_lines() {
        let mut wrapper = node(
            "WriteOnlyShard",
            "localhost/t_0000_write_only",
            2,
            vec![node("KvShard", "b/t_0000", 1, vec![])],
        );
        wrapper.busy = true;
        let root = node(
            "ReplicatingShard",
            "localhost/t_0000",
            0,
            vec![node("KvShard", "a/t_0000", 1, vec![]), wrapper],
        );
        let want = concat!(
            "ReplicatingShard localhost/t_0000\n",
            "├── KvShard a/t_0000 (weight 1)\n",
            "└── WriteOnlyShard localhost/t_0000_write_only (weight 2) [busy]\n",
            "    └── KvShard b/t_0000 (weight 1)\n",
        );
        assert_eq!(tree(&root), want);
        let json = tree_json(&root);
        assert_eq!(json["children"][1]["children"][0]["id"], "b/t_0000");
        assert_eq!(json["children"][1]["busy"], true);
    }

    #[test]
    fn nested_branches_keep_their_rails() {
        let root = node(
            "ReplicatingShard",
            "localhost/r",
            0,
            vec![
                node(
                    "ReadOnlyShard",
                    "localhost/ro",
                    1,
                    vec![node("KvShard", "a/x", 1, vec![])],
                ),
                node("KvShard", "b/x", 1, vec![]),
            ],
        );
        let lines: Vec<_> = tree(&root).lines().map(str::to_owned).collect();
        assert_eq!(lines[2], "│   └── KvShard a/x (weight 1)");
        assert_eq!(lines[3], "└── KvShard b/x (weight 1)");
    }

    #[test]
    fn tables_align_columns() {
        let text = table(
            &["NAME", "COUNT"],
            &[1],
            vec![
                vec!["a".into(), "1".into()],
                vec!["long-name".into(), "100".into()],
            ],
        );
        let lines: Vec<_> = text.lines().collect();
        assert_eq!(lines.len(), 3, "{text}");
        let column = lines[0].find("COUNT").expect("header");
        assert_eq!(lines[1].len(), lines[2].len(), "{text}");
        assert!(lines[2][column..].contains("100"), "{text}");
    }

    #[test]
    fn small_formats() {
        assert_eq!(hex(1 << 58), "0x400000000000000");
        assert_eq!(hex(0), "0x000000000000000");
        assert_eq!(truncate("abcdef", 4), "abc…");
        assert_eq!(truncate("abc", 4), "abc");
        assert_eq!(priority(pb::Priority::Copy as i32), "copy");
        assert_eq!(job_state(9), "unknown (9)");
    }
}
