//! Members of the cluster and the choice of each entity's owner: by rendezvous hashing, unless
//! an operator pinned the entity to a member that is up.

use std::collections::BTreeMap;
use std::hash::{DefaultHasher, Hash, Hasher};
use std::sync::Arc;

use serde::{Deserialize, Serialize};

use crate::EntityKey;

/// Where a member is in its life in the cluster.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum MemberStatus {
    /// Connected, not yet given entities.
    Joining,
    /// Owns entities.
    Up,
    /// Draining before it exits.
    Leaving,
    /// Unreachable.
    Down,
}

impl MemberStatus {
    /// The status as a label.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Joining => "joining",
            Self::Up => "up",
            Self::Leaving => "leaving",
            Self::Down => "down",
        }
    }
}

/// One node of the cluster as the others see it.
#[derive(Debug, Clone, Serialize)]
pub struct Member {
    /// The node's unique name.
    pub name: String,
    /// Its node-to-node address, if it has one.
    pub address: Option<String>,
    /// Where it is in its life.
    pub status: MemberStatus,
}

/// The member list and the owner of every key.
#[derive(Debug, Clone)]
pub struct Placement {
    local: String,
    members: Vec<Member>,
    overrides: Arc<BTreeMap<EntityKey, String>>,
}

impl Placement {
    /// A placement over `members`, seen from the member named `local`.
    pub fn new(local: String, members: Vec<Member>) -> Self {
        Self {
            local,
            members,
            overrides: Arc::default(),
        }
    }

    /// The same placement with entities pinned to members: an entity listed here is owned by
    /// its member while that member is up, and placed by hashing otherwise.
    pub fn with_overrides(mut self, overrides: Arc<BTreeMap<EntityKey, String>>) -> Self {
        self.overrides = overrides;
        self
    }

    /// The entities pinned to a member.
    pub fn overrides(&self) -> &BTreeMap<EntityKey, String> {
        &self.overrides
    }

    /// The names of the members that own keys.
    pub fn up_names(&self) -> Vec<&str> {
        let mut names: Vec<&str> = self
            .members
            .iter()
            .filter(|m| m.status == MemberStatus::Up)
            .map(|m| m.name.as_str())
            .collect();
        names.sort_unstable();
        names
    }

    /// The name of this node.
    pub fn local(&self) -> &str {
        &self.local
    }

    /// Every known member.
    pub fn members(&self) -> &[Member] {
        &self.members
    }

    /// The member that owns `key`: the `up` member with the highest weight for it (rendezvous
    /// hashing), so adding or removing a member moves only the keys that member wins or held.
    pub fn owner(&self, key: &EntityKey) -> Option<&Member> {
        if let Some(pinned) = self.overrides.get(key)
            && let Some(m) = self
                .members
                .iter()
                .find(|m| &m.name == pinned && m.status == MemberStatus::Up)
        {
            return Some(m);
        }
        self.members
            .iter()
            .filter(|m| m.status == MemberStatus::Up)
            .max_by_key(|m| weight(&m.name, key))
    }

    /// Whether this node owns `key`.
    pub fn is_local(&self, key: &EntityKey) -> bool {
        self.owner(key).is_some_and(|m| m.name == self.local)
    }
}

fn weight(member: &str, key: &EntityKey) -> u64 {
    // DefaultHasher::new() uses fixed keys, so every node computes the same weights.
    let mut h = DefaultHasher::new();
    member.hash(&mut h);
    key.kind().hash(&mut h);
    key.id().hash(&mut h);
    h.finish()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn with_members(names: &[&str]) -> Placement {
        let members = names
            .iter()
            .map(|n| Member {
                name: (*n).into(),
                address: None,
                status: MemberStatus::Up,
            })
            .collect();
        Placement::new(names[0].into(), members)
    }

    #[test]
    fn a_single_node_owns_everything() {
        let p = with_members(&["a"]);
        assert!(p.is_local(&EntityKey::new("item", 1)));
    }

    #[test]
    fn members_not_up_own_nothing() {
        let mut p = with_members(&["a", "b"]);
        p.members[1].status = MemberStatus::Leaving;
        assert!((0..100).all(|i| p.is_local(&EntityKey::new("item", i))));
    }

    #[test]
    fn a_pinned_key_follows_its_member_while_it_is_up() {
        let key = EntityKey::new("item", 7);
        let mut p = with_members(&["a", "b", "c"]);
        let hashed = p.owner(&key).unwrap().name.clone();
        let other = ["a", "b", "c"].into_iter().find(|n| *n != hashed).unwrap();
        let pins = BTreeMap::from([(key.clone(), other.to_owned())]);
        p = p.with_overrides(Arc::new(pins));
        assert_eq!(p.owner(&key).unwrap().name, other);
        let unpinned = EntityKey::new("item", 8);
        assert_eq!(
            p.owner(&unpinned).unwrap().name,
            with_members(&["a", "b", "c"])
                .owner(&unpinned)
                .unwrap()
                .name
        );
        let i = p.members.iter().position(|m| m.name == other).unwrap();
        p.members[i].status = MemberStatus::Leaving;
        assert_eq!(p.owner(&key).unwrap().name, hashed);
    }

    #[test]
    fn adding_a_member_moves_only_keys_it_wins() {
        let before = with_members(&["a", "b", "c"]);
        let after = with_members(&["a", "b", "c", "d"]);
        let keys: Vec<_> = (0..3000).map(|i| EntityKey::new("item", i)).collect();
        let mut moved = 0;
        for k in &keys {
            let (o1, o2) = (before.owner(k).unwrap(), after.owner(k).unwrap());
            if o1.name != o2.name {
                assert_eq!(o2.name, "d", "a key moved between old members");
                moved += 1;
            }
        }
        // About a quarter of the keys go to the new member.
        assert!((500..1000).contains(&moved), "moved {moved}");
    }
}
