//! Matrix factorisation: non-negative R ≈ W·H by Lee and Seung's multiplicative updates,
//! which never increase the Frobenius error. Only H (factors × items) is kept; a user's row
//! of W is folded in from their history when they ask, so new interactions count at once.

use ndarray::{Array1, Array2, Axis};
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use serde::{Deserialize, Serialize};
use sprs::CsMat;

/// Keeps divisions finite.
const EPSILON: f64 = 1e-9;
/// Multiplicative updates of a user's factors when folding them in.
const FOLD_IN_ROUNDS: usize = 50;

/// The item factors.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct Nmf {
    /// Factors × items.
    pub h: Array2<f64>,
    /// H·Hᵀ, for folding in.
    pub hht: Array2<f64>,
}

/// The sparse `m` (rows × cols) times the dense `d` (cols × k).
fn sparse_dot(m: &CsMat<f32>, d: &Array2<f64>) -> Array2<f64> {
    let mut out = Array2::<f64>::zeros((m.rows(), d.ncols()));
    for (r, row) in m.outer_iterator().enumerate() {
        let mut o = out.row_mut(r);
        for (c, x) in row.iter() {
            o.scaled_add(f64::from(*x), &d.row(c));
        }
    }
    out
}

/// ‖R − W·H‖²: ‖R‖² − 2⟨R, W·H⟩ + tr(WᵀW · HHᵀ), without forming W·H.
pub fn error(r: &CsMat<f32>, w: &Array2<f64>, h: &Array2<f64>) -> f64 {
    let mut norm = 0.0;
    let mut cross = 0.0;
    for (u, row) in r.outer_iterator().enumerate() {
        let wu = w.row(u);
        for (i, x) in row.iter() {
            let x = f64::from(*x);
            norm += x * x;
            cross += x * wu.dot(&h.column(i));
        }
    }
    let gram = w.t().dot(w) * h.dot(&h.t());
    norm - 2.0 * cross + gram.sum()
}

impl Nmf {
    /// Factorises `r` (users × items) with `rank` factors in `rounds` updates, from a seeded
    /// random start; `each` hears every round's W, H after its update.
    pub fn train(
        r: &CsMat<f32>,
        rank: usize,
        rounds: usize,
        seed: u64,
        mut each: impl FnMut(&Array2<f64>, &Array2<f64>),
    ) -> Self {
        let (users, items) = r.shape();
        let rank = rank.max(1);
        let mut rng = StdRng::seed_from_u64(seed);
        let mean = r.data().iter().map(|x| f64::from(*x)).sum::<f64>()
            / (users.max(1) * items.max(1)) as f64;
        let scale = (mean / rank as f64).sqrt().max(1e-3);
        let mut w = Array2::from_shape_fn((users, rank), |_| scale * rng.random_range(0.5..1.5));
        let mut h = Array2::from_shape_fn((rank, items), |_| scale * rng.random_range(0.5..1.5));
        let rt = r.transpose_view().to_csr();
        for _ in 0..rounds {
            // H ← H ⊙ (WᵀR) ⊘ (WᵀW·H)
            let wtr = sparse_dot(&rt, &w).reversed_axes();
            let denominator = w.t().dot(&w).dot(&h);
            h.zip_mut_with(&(wtr / (denominator + EPSILON)), |a, b| *a *= b);
            // W ← W ⊙ (R·Hᵀ) ⊘ (W·HHᵀ)
            let rht = sparse_dot(r, &h.t().to_owned());
            let denominator = w.dot(&h.dot(&h.t()));
            w.zip_mut_with(&(rht / (denominator + EPSILON)), |a, b| *a *= b);
            each(&w, &h);
        }
        let hht = h.dot(&h.t());
        Self { h, hht }
    }

    /// The factors of a user with `history` (item, weight), H held fixed: the same
    /// multiplicative update as training, on one row, in place.
    pub fn fold_in(&self, history: &[(u32, f32)]) -> Array1<f64> {
        let rank = self.h.nrows();
        let mut rht = vec![0f64; rank];
        for (i, x) in history {
            for (r, h) in rht.iter_mut().zip(self.h.column(*i as usize)) {
                *r += f64::from(*x) * h;
            }
        }
        let mut w = vec![0.1f64; rank];
        let mut next = vec![0f64; rank];
        for _ in 0..FOLD_IN_ROUNDS {
            for (f, n) in next.iter_mut().enumerate() {
                let denominator: f64 = self.hht.row(f).iter().zip(&w).map(|(a, b)| a * b).sum();
                *n = w[f] * rht[f] / (denominator + EPSILON);
            }
            std::mem::swap(&mut w, &mut next);
        }
        Array1::from(w)
    }

    /// Every item's score for a user with `history`.
    pub fn score(&self, history: &[(u32, f32)]) -> Vec<f32> {
        if self.h.is_empty() {
            return Vec::new();
        }
        let w = self.fold_in(history);
        self.h.t().dot(&w).iter().map(|x| *x as f32).collect()
    }

    /// The items nearest `item` in factor space (cosine).
    pub fn similar(&self, item: u32) -> Vec<f32> {
        if self.h.is_empty() {
            return Vec::new();
        }
        let norms = self.h.map_axis(Axis(0), |c| c.dot(&c).sqrt());
        let me = self.h.column(item as usize);
        let dots = self.h.t().dot(&me);
        dots.iter()
            .zip(norms.iter())
            .map(|(d, n)| (d / (n * norms[item as usize]).max(EPSILON)) as f32)
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use sprs::TriMat;

    use super::*;

    /// Two blocks: users 0–2 use items 0–2, users 3–5 use items 3–5.
    fn blocks() -> CsMat<f32> {
        let mut t = TriMat::new((6, 6));
        for u in 0..6 {
            for i in 0..6 {
                if (u < 3) == (i < 3) && (u + i) % 4 != 0 {
                    t.add_triplet(u, i, 1.0);
                }
            }
        }
        t.to_csr()
    }

    #[test]
    fn the_error_never_increases() {
        let r = blocks();
        let mut errors = Vec::new();
        let _ = Nmf::train(&r, 2, 200, 7, |w, h| errors.push(error(&r, w, h)));
        for pair in errors.windows(2) {
            assert!(
                pair[1] <= pair[0] * (1.0 + 1e-9) + 1e-12,
                "the error rose from {} to {}",
                pair[0],
                pair[1]
            );
        }
        assert!(errors.last().unwrap() < &errors[0]);
    }

    #[test]
    fn the_error_formula_matches_the_dense_one() {
        let r = blocks();
        let w = Array2::from_shape_fn((6, 2), |(a, b)| (a + b) as f64 * 0.1);
        let h = Array2::from_shape_fn((2, 6), |(a, b)| (a * b) as f64 * 0.2 + 0.1);
        let dense = r.to_dense().mapv(f64::from) - w.dot(&h);
        let expected = dense.iter().map(|x| x * x).sum::<f64>();
        assert!((error(&r, &w, &h) - expected).abs() < 1e-9);
    }

    #[test]
    fn a_folded_in_user_of_the_first_block_scores_it_higher() {
        let r = blocks();
        let nmf = Nmf::train(&r, 2, 300, 7, |_, _| {});
        let s = nmf.score(&[(0, 1.0), (1, 1.0)]);
        assert!(s[2] > s[3] && s[2] > s[4] && s[2] > s[5], "{s:?}");
    }
}
