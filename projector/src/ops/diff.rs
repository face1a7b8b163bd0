//! Differences between a live bucket and its rebuilt twin, key by key.

use std::collections::BTreeMap;

use herald_core::stored::StoredValue;
use serde_json::Value;

use herald_runtime::buckets::Item;

/// One key that differs.
#[derive(Debug, Clone, PartialEq)]
pub enum KeyDiff {
    /// Only in the rebuilt bucket.
    Added { key: String, rebuilt: Item },
    /// Only in the live bucket.
    Removed { key: String, live: Item },
    /// In both, with different values.
    Changed {
        key: String,
        live: Item,
        rebuilt: Item,
    },
}

impl KeyDiff {
    pub fn key(&self) -> &str {
        match self {
            KeyDiff::Added { key, .. }
            | KeyDiff::Removed { key, .. }
            | KeyDiff::Changed { key, .. } => key,
        }
    }

    /// `+`, `-` or `~`, as printed.
    pub fn mark(&self) -> char {
        match self {
            KeyDiff::Added { .. } => '+',
            KeyDiff::Removed { .. } => '-',
            KeyDiff::Changed { .. } => '~',
        }
    }

    /// A readable line without the bucket name.
    pub fn describe(&self) -> String {
        match self {
            KeyDiff::Added { key, rebuilt } => {
                format!("+ {key}  rebuilt: {}", describe_value(key, &rebuilt.value))
            }
            KeyDiff::Removed { key, live } => {
                format!("- {key}  live: {}", describe_value(key, &live.value))
            }
            KeyDiff::Changed { key, live, rebuilt } => format!(
                "~ {key}  live: {}  rebuilt: {}",
                describe_value(key, &live.value),
                describe_value(key, &rebuilt.value)
            ),
        }
    }
}

/// Values are equal when their JSON is, whatever the field order.
fn same(a: &[u8], b: &[u8]) -> bool {
    if a == b {
        return true;
    }
    match (
        serde_json::from_slice::<Value>(a),
        serde_json::from_slice::<Value>(b),
    ) {
        (Ok(a), Ok(b)) => a == b,
        _ => a == b,
    }
}

/// Every key that differs between `live` and `rebuilt`, in key order.
pub fn diff(live: &[Item], rebuilt: &[Item]) -> Vec<KeyDiff> {
    let live: BTreeMap<&str, &Item> = live.iter().map(|i| (i.key.as_str(), i)).collect();
    let rebuilt: BTreeMap<&str, &Item> = rebuilt.iter().map(|i| (i.key.as_str(), i)).collect();
    let mut keys: Vec<&str> = live.keys().chain(rebuilt.keys()).copied().collect();
    keys.sort_unstable();
    keys.dedup();
    keys.into_iter()
        .filter_map(|key| match (live.get(key), rebuilt.get(key)) {
            (Some(l), Some(r)) if same(&l.value, &r.value) => None,
            (Some(l), Some(r)) => Some(KeyDiff::Changed {
                key: key.to_owned(),
                live: (*l).clone(),
                rebuilt: (*r).clone(),
            }),
            (Some(l), None) => Some(KeyDiff::Removed {
                key: key.to_owned(),
                live: (*l).clone(),
            }),
            (None, Some(r)) => Some(KeyDiff::Added {
                key: key.to_owned(),
                rebuilt: (*r).clone(),
            }),
            (None, None) => None,
        })
        .collect()
}

/// A short description of the value under `key`.
pub fn describe_value(key: &str, value: &[u8]) -> String {
    match StoredValue::decode(key, value) {
        Ok(stored) => stored.describe(),
        Err(err) => format!("unreadable value ({} bytes): {err}", value.len()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn item(key: &str, value: &str) -> Item {
        Item {
            key: key.to_owned(),
            value: value.as_bytes().to_vec().into(),
            revision: 1,
        }
    }

    #[test]
    fn finds_added_removed_and_changed_keys() {
        let live = [
            item("a", r#"{"x":1,"y":2}"#),
            item("b", "1"),
            item("c", "1"),
        ];
        let rebuilt = [
            item("a", r#"{"y":2,"x":1}"#),
            item("c", "2"),
            item("d", "1"),
        ];
        let marks: Vec<(char, String)> = diff(&live, &rebuilt)
            .iter()
            .map(|d| (d.mark(), d.key().to_owned()))
            .collect();
        assert_eq!(
            marks,
            vec![('-', "b".into()), ('~', "c".into()), ('+', "d".into())]
        );
    }
}
