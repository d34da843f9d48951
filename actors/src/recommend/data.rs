//! What the engines learn from: interactions of users with events (kinds and their weights),
//! the events' descriptions, and the user × event matrix of implicit feedback.

use std::collections::HashMap;

use serde::{Deserialize, Serialize};
use sprs::{CsMat, TriMat};

/// What a user did with an event.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Kind {
    /// Opened the event's page.
    View,
    /// Followed a link to it.
    Click,
    /// Liked it.
    Like,
    /// Shared it.
    Share,
    /// Took a seat.
    Register,
    /// Joined the waitlist.
    Waitlist,
    /// Cancelled a registration.
    Cancel,
}

impl Kind {
    /// Every kind, in the spelling stored and accepted.
    pub const ALL: [&'static str; 7] = [
        "view", "click", "like", "share", "register", "waitlist", "cancel",
    ];

    /// How strongly the kind says the user wants such events; a cancellation takes a
    /// registration's weight back.
    pub fn weight(self) -> f32 {
        match self {
            Kind::View => 1.0,
            Kind::Click => 2.0,
            Kind::Like | Kind::Share => 3.0,
            Kind::Waitlist => 4.0,
            Kind::Register => 5.0,
            Kind::Cancel => -5.0,
        }
    }

    /// The stored spelling.
    pub fn as_str(self) -> &'static str {
        match self {
            Kind::View => "view",
            Kind::Click => "click",
            Kind::Like => "like",
            Kind::Share => "share",
            Kind::Register => "register",
            Kind::Waitlist => "waitlist",
            Kind::Cancel => "cancel",
        }
    }

    /// Parses the stored spelling.
    pub fn parse(s: &str) -> Option<Self> {
        Some(match s {
            "view" => Kind::View,
            "click" => Kind::Click,
            "like" => Kind::Like,
            "share" => Kind::Share,
            "register" => Kind::Register,
            "waitlist" => Kind::Waitlist,
            "cancel" => Kind::Cancel,
            _ => return None,
        })
    }
}

/// One interaction.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct Interaction {
    /// Who.
    pub user_id: i64,
    /// With which event.
    pub event_id: i64,
    /// What they did.
    pub kind: Kind,
    /// When, in Unix seconds.
    pub ts: i64,
}

/// An event as the engines see it.
#[derive(Debug, Clone, PartialEq, Default, Serialize, Deserialize)]
pub struct Item {
    /// The event's id.
    pub event_id: i64,
    /// Title.
    pub title: String,
    /// Description.
    pub description: String,
    /// Category (empty when unknown).
    pub category: String,
    /// Tags.
    pub tags: Vec<String>,
    /// Venue latitude.
    pub lat: Option<f64>,
    /// Venue longitude.
    pub lon: Option<f64>,
    /// When it takes place, in Unix seconds (0 when unknown).
    pub date: i64,
    /// Price in cents (`None`: free or unknown).
    pub price_cents: Option<i64>,
    /// Its organiser (0 when unknown).
    pub created_by: i64,
}

/// Sums each (user, event) pair's kind weights and keeps the positive ones as `ln(1 + sum)`.
pub fn aggregate<'a>(
    interactions: impl IntoIterator<Item = &'a Interaction>,
) -> HashMap<(i64, i64), f32> {
    let mut sums: HashMap<(i64, i64), f32> = HashMap::new();
    for i in interactions {
        *sums.entry((i.user_id, i.event_id)).or_default() += i.kind.weight();
    }
    sums.retain(|_, w| *w > 0.0);
    for w in sums.values_mut() {
        *w = w.ln_1p();
    }
    sums
}

/// The user × item matrix of implicit feedback, in both orientations.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Matrix {
    /// The user of each row.
    pub users: Vec<i64>,
    /// Users × items.
    pub by_user: CsMat<f32>,
    /// Items × users.
    pub by_item: CsMat<f32>,
}

impl Matrix {
    /// Builds the matrix of `weights` over the items indexed by `item_index`; pairs naming
    /// an item outside it are left out.
    pub fn new(weights: &HashMap<(i64, i64), f32>, item_index: &HashMap<i64, u32>) -> Self {
        let mut users: Vec<i64> = weights.keys().map(|(u, _)| *u).collect();
        users.sort_unstable();
        users.dedup();
        let user_index: HashMap<i64, usize> =
            users.iter().enumerate().map(|(n, u)| (*u, n)).collect();
        let mut tri = TriMat::new((users.len(), item_index.len()));
        for ((u, e), w) in weights {
            if let Some(&i) = item_index.get(e) {
                tri.add_triplet(user_index[u], i as usize, *w);
            }
        }
        let by_user: CsMat<f32> = tri.to_csr();
        let by_item = by_user.transpose_view().to_csr();
        Self {
            users,
            by_user,
            by_item,
        }
    }

    /// The row of `user`, if they have one.
    pub fn row_of(&self, user: i64) -> Option<usize> {
        self.users.binary_search(&user).ok()
    }
}

impl From<&crate::model::Event> for Item {
    fn from(e: &crate::model::Event) -> Self {
        Self {
            event_id: e.id,
            title: e.title.clone(),
            description: e.description.clone(),
            category: e.category.as_str().to_owned(),
            tags: e.tags.clone(),
            lat: e.latitude,
            lon: e.longitude,
            date: e.date.timestamp(),
            price_cents: e.price_cents,
            created_by: e.created_by,
        }
    }
}
