//! Node names in package definitions, shared: every package that lists a node holds one allocation
//! of its name, whichever entry, snapshot or file it was read from.
//!
//! A cluster of 50 nodes whose 1,000 packages each list every node would otherwise hold 50,000
//! small strings (about 2.8 MB) on every node; shared, they are 50,000 pointers.

use std::borrow::Borrow;
use std::collections::HashSet;
use std::fmt;
use std::ops::Deref;
use std::sync::{Arc, Mutex, OnceLock};

use serde::de::{self, Visitor};
use serde::{Deserialize, Deserializer, Serialize, Serializer};

/// A node's name as a package lists it. Compares, hashes, orders, prints and serializes as the
/// plain string.
#[derive(Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct NodeName(Arc<str>);

impl NodeName {
    /// The shared copy of `name`.
    pub fn new(name: &str) -> NodeName {
        NodeName(NAMES.get_or_init(Default::default).lock().expect("node name table lock").intern(name))
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

/// The names in use. A name no package holds any more is dropped when the table has doubled since
/// it was last swept, so names of removed nodes and mistyped names do not accumulate.
#[derive(Default)]
struct Names {
    names: HashSet<Arc<str>>,
    swept_at: usize,
}

static NAMES: OnceLock<Mutex<Names>> = OnceLock::new();

impl Names {
    fn intern(&mut self, name: &str) -> Arc<str> {
        if let Some(shared) = self.names.get(name) {
            return shared.clone();
        }
        if self.names.len() >= (2 * self.swept_at).max(64) {
            self.names.retain(|shared| Arc::strong_count(shared) > 1);
            self.swept_at = self.names.len();
        }
        let shared: Arc<str> = Arc::from(name);
        self.names.insert(shared.clone());
        shared
    }
}

impl Deref for NodeName {
    type Target = str;

    fn deref(&self) -> &str {
        &self.0
    }
}

impl Borrow<str> for NodeName {
    fn borrow(&self) -> &str {
        &self.0
    }
}

impl From<&str> for NodeName {
    fn from(name: &str) -> NodeName {
        NodeName::new(name)
    }
}

impl PartialEq<str> for NodeName {
    fn eq(&self, other: &str) -> bool {
        &*self.0 == other
    }
}

impl PartialEq<&str> for NodeName {
    fn eq(&self, other: &&str) -> bool {
        &*self.0 == *other
    }
}

impl PartialEq<String> for NodeName {
    fn eq(&self, other: &String) -> bool {
        *self.0 == **other
    }
}

impl fmt::Display for NodeName {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl fmt::Debug for NodeName {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Debug::fmt(&*self.0, f)
    }
}

impl Serialize for NodeName {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.serialize_str(&self.0)
    }
}

impl<'de> Deserialize<'de> for NodeName {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<NodeName, D::Error> {
        struct NameVisitor;
        impl Visitor<'_> for NameVisitor {
            type Value = NodeName;

            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a node name")
            }

            fn visit_str<E: de::Error>(self, name: &str) -> Result<NodeName, E> {
                Ok(NodeName::new(name))
            }
        }
        deserializer.deserialize_str(NameVisitor)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_same_name_read_twice_is_one_allocation() {
        let first: NodeName = serde_json::from_str("\"shared-a\"").unwrap();
        let second = NodeName::new(&String::from("shared-a"));
        assert!(Arc::ptr_eq(&first.0, &second.0));
        assert_eq!(first, "shared-a");
        assert_eq!(serde_json::to_string(&second).unwrap(), "\"shared-a\"");
    }

    #[test]
    fn names_nobody_holds_are_swept_once_the_table_has_doubled() {
        let mut names = Names::default();
        let kept: Vec<Arc<str>> = (0..10).map(|i| names.intern(&format!("kept-{i}"))).collect();
        for i in 0..200 {
            names.intern(&format!("gone-{i}"));
        }
        assert!(names.names.len() < 150, "{} names left", names.names.len());
        for (i, shared) in kept.iter().enumerate() {
            assert!(Arc::ptr_eq(shared, &names.intern(&format!("kept-{i}"))), "kept-{i} was swept while held");
        }
    }
}
