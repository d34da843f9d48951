//! Collaborative filtering: item-item cosine similarity on the interaction matrix, each item
//! keeping its nearest neighbours; user-based scores from the most similar users when the
//! item neighbourhoods say too little.

use serde::{Deserialize, Serialize};

use super::data::Matrix;

/// Users consulted by the user-based fallback.
const PEERS: usize = 50;

/// The item neighbourhoods.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct ItemNeighbours {
    /// Per item, its nearest items by cosine similarity, best first.
    pub neighbours: Vec<Vec<(u32, f32)>>,
}

/// The `k` best of `scores` (index, score) with a positive score, best first.
pub fn top_k(scores: impl IntoIterator<Item = (u32, f32)>, k: usize) -> Vec<(u32, f32)> {
    let mut v: Vec<(u32, f32)> = scores.into_iter().filter(|(_, s)| *s > 0.0).collect();
    if v.len() > k {
        v.select_nth_unstable_by(k, |a, b| b.1.total_cmp(&a.1));
        v.truncate(k);
    }
    v.sort_unstable_by(|a, b| b.1.total_cmp(&a.1).then(a.0.cmp(&b.0)));
    v
}

impl ItemNeighbours {
    /// The `k` nearest neighbours of every item of `m`.
    pub fn train(m: &Matrix, k: usize) -> Self {
        let items = m.by_item.rows();
        let norms: Vec<f32> = m
            .by_item
            .outer_iterator()
            .map(|row| row.data().iter().map(|x| x * x).sum::<f32>().sqrt())
            .collect();
        let mut acc = vec![0f32; items];
        let mut touched: Vec<u32> = Vec::new();
        let mut neighbours = Vec::with_capacity(items);
        for (i, row) in m.by_item.outer_iterator().enumerate() {
            for (u, r_ui) in row.iter() {
                if let Some(user) = m.by_user.outer_view(u) {
                    for (j, r_uj) in user.iter() {
                        if acc[j] == 0.0 {
                            touched.push(j as u32);
                        }
                        acc[j] += r_ui * r_uj;
                    }
                }
            }
            let scores = touched.drain(..).filter(|j| *j as usize != i).map(|j| {
                let dot = std::mem::take(&mut acc[j as usize]);
                (
                    j,
                    dot / (norms[i] * norms[j as usize]).max(f32::MIN_POSITIVE),
                )
            });
            neighbours.push(top_k(scores, k));
            acc[i] = 0.0;
        }
        Self { neighbours }
    }

    /// Every item's score for a user with `history` (item, weight).
    pub fn score(&self, history: &[(u32, f32)]) -> Vec<f32> {
        let mut out = vec![0f32; self.neighbours.len()];
        for (j, w) in history {
            for (i, sim) in &self.neighbours[*j as usize] {
                out[*i as usize] += w * sim;
            }
        }
        out
    }
}

/// User-based scores: the items of the [`PEERS`] users whose rows are nearest (cosine) to
/// `history`, weighted by that similarity; `me` (the user's own row) is left out.
pub fn user_based(m: &Matrix, history: &[(u32, f32)], me: Option<usize>) -> Vec<f32> {
    let users = m.by_user.rows();
    let mut dots = vec![0f32; users];
    let mut touched = Vec::new();
    for (j, w) in history {
        if let Some(col) = m.by_item.outer_view(*j as usize) {
            for (u, r) in col.iter() {
                if dots[u] == 0.0 {
                    touched.push(u as u32);
                }
                dots[u] += w * r;
            }
        }
    }
    let norm = history.iter().map(|(_, w)| w * w).sum::<f32>().sqrt();
    let sims = touched
        .into_iter()
        .filter(|u| Some(*u as usize) != me)
        .map(|u| {
            let row = m
                .by_user
                .outer_view(u as usize)
                .expect("a row of the matrix");
            let n = row.data().iter().map(|x| x * x).sum::<f32>().sqrt();
            (u, dots[u as usize] / (n * norm).max(f32::MIN_POSITIVE))
        });
    let mut out = vec![0f32; m.by_item.rows()];
    for (u, sim) in top_k(sims, PEERS) {
        if let Some(row) = m.by_user.outer_view(u as usize) {
            for (i, r) in row.iter() {
                out[i] += sim * r;
            }
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use std::collections::HashMap;

    use super::*;

    /// Users 1 and 2 share items 10 and 11; user 3 has 12 and 13.
    fn matrix() -> Matrix {
        let weights: HashMap<(i64, i64), f32> = [
            ((1, 10), 1.0),
            ((1, 11), 1.0),
            ((2, 10), 1.0),
            ((2, 11), 1.0),
            ((2, 12), 1.0),
            ((3, 12), 1.0),
            ((3, 13), 1.0),
        ]
        .into_iter()
        .collect();
        let index = (10..14).enumerate().map(|(n, e)| (e, n as u32)).collect();
        Matrix::new(&weights, &index)
    }

    #[test]
    fn item_cosines_match_a_hand_computation() {
        let n = ItemNeighbours::train(&matrix(), 10);
        // 10 and 11 have the same users: cosine 1.
        assert_eq!(n.neighbours[0][0].0, 1);
        assert!((n.neighbours[0][0].1 - 1.0).abs() < 1e-6);
        // 10 = {1,2}, 12 = {2,3}: 1 / (√2·√2) = 0.5.
        let s = n.neighbours[0].iter().find(|(j, _)| *j == 2).unwrap().1;
        assert!((s - 0.5).abs() < 1e-6);
        // 10 and 13 share nobody.
        assert!(n.neighbours[0].iter().all(|(j, _)| *j != 3));
    }

    #[test]
    fn a_user_of_item_10_is_offered_11_before_13() {
        let n = ItemNeighbours::train(&matrix(), 10);
        let s = n.score(&[(0, 1.0)]);
        assert!(s[1] > s[2] && s[2] > s[3] && s[3] == 0.0, "{s:?}");
    }

    #[test]
    fn user_based_follows_the_nearest_users() {
        let m = matrix();
        // Like user 1 (items 10, 11): user 2 is nearest, and has 12.
        let s = user_based(&m, &[(0, 1.0), (1, 1.0)], Some(0));
        assert!(s[2] > 0.0 && s[3] == 0.0, "{s:?}");
    }
}
