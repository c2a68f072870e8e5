//! Statistics of a row of logits, accumulated block by block as the blocks are computed, so
//! that a lens analysis never stores a whole row (or reads one twice).
//!
//! [`RowAcc`] keeps what the softmax statistics need in a form that blocks and partial rows
//! combine into exactly: the running maximum `m`, `Σ e` and `Σ e·(x − m)` with `e = exp(x − m)`
//! (rescaled when the maximum grows), `Σ p·x` against a reference distribution `p`, how many
//! values exceed the value at a target id, the `k` largest values with their ids, and the value
//! at one chosen id.
//!
//! The target's own value is only known once its block is computed, and blocks run in any
//! order, so the caller passes an estimate with a band around it that contains the computed
//! value: values above the band are counted at once, values within it are kept and compared
//! with the target's computed value at the end ([`RowAcc::rank`]). The count is then exactly
//! that of the computed values strictly above the target's, as a reduction over the whole row
//! would count. From these: `log Σ exp x = m + ln Σ e`, entropy `ln Σ e − Σ e·(x − m) / Σ e`,
//! `KL(p ‖ softmax x) = Σ p log p − Σ p·x + log Σ exp x`.
//!
//! Within a block the sums run in eight f32 lanes with a polynomial `exp` (relative error
//! about 2⁻²³), which the compiler vectorizes; each block's lane sums are added in f64.

use crate::Level;

/// What a row's statistics are measured against.
#[derive(Debug, Clone, Copy)]
pub struct RowQuery<'a> {
    /// The reference distribution over the whole vocabulary (`Σ p·x` is accumulated).
    pub p: &'a [f32],
    /// The target's id, and a band `[near, above]` that its computed value lies within.
    pub target_id: u32,
    pub near: f32,
    pub above: f32,
    /// The id whose value [`RowAcc::picked`] keeps.
    pub pick: Option<u32>,
    /// How many of the largest values [`RowAcc::top`] keeps.
    pub k: usize,
}

#[derive(Debug, Clone, PartialEq)]
pub struct RowAcc {
    /// The largest value so far (−∞ before any).
    pub max: f32,
    /// `Σ exp(x − max)`.
    pub sum: f64,
    /// `Σ exp(x − max)·(x − max)`.
    pub sum_ed: f64,
    /// `Σ p·x`.
    pub sum_px: f64,
    /// Values above the target's band, the target's own id excluded.
    pub above: u32,
    /// Values within the target's band, the target's own id excluded.
    pub near: Vec<f32>,
    /// The target's computed value.
    pub target: Option<f32>,
    /// `(id, value)` of the largest values, descending; equal values keep the lower id first.
    pub top: Vec<(u32, f32)>,
    pub picked: Option<f32>,
}

impl Default for RowAcc {
    fn default() -> Self {
        RowAcc {
            max: f32::NEG_INFINITY,
            sum: 0.0,
            sum_ed: 0.0,
            sum_px: 0.0,
            above: 0,
            near: Vec::new(),
            target: None,
            top: Vec::new(),
            picked: None,
        }
    }
}

impl RowAcc {
    /// Adds the values `x` of ids `first..first + x.len()`.
    pub fn add_block(&mut self, x: &[f32], first: usize, q: &RowQuery) {
        self.add_block_with(Level::detect(), x, first, q)
    }

    /// [`RowAcc::add_block`] with the code of `level`, which must be one this CPU runs (else
    /// the portable code runs).
    pub fn add_block_with(&mut self, level: Level, x: &[f32], first: usize, q: &RowQuery) {
        if x.is_empty() {
            return;
        }
        let level = if level.runs_here() {
            level
        } else {
            Level::Portable
        };
        let p = &q.p[first..first + x.len()];
        let block = block_sums(level, x, p, q.near, q.above);
        self.raise_max(block.max);
        let shift = self.max;
        let sums = exp_sums(level, x, shift);
        self.sum += sums.0;
        self.sum_ed += sums.1;
        self.sum_px += block.sum_px;
        let ids = first..first + x.len();
        let t = q.target_id as usize;
        let mut above = block.above;
        if ids.contains(&t) {
            let v = x[t - first];
            self.target = Some(v);
            above -= (v > q.above) as u32;
        }
        self.above += above;
        if block.from_near > block.above {
            for (j, &v) in x.iter().enumerate() {
                if v >= q.near && v <= q.above && first + j != t {
                    self.near.push(v);
                }
            }
        }
        if let Some(pick) = q.pick.filter(|&i| ids.contains(&(i as usize))) {
            self.picked = Some(x[pick as usize - first]);
        }
        self.add_top(x, first, q.k, block.max);
    }

    /// Combines the accumulators of two disjoint parts of the same row.
    pub fn merge(&mut self, o: RowAcc, k: usize) {
        self.raise_max(o.max);
        if o.sum > 0.0 {
            let c = ((o.max - self.max) as f64).exp();
            let shift = (o.max - self.max) as f64;
            self.sum += c * o.sum;
            self.sum_ed += c * (o.sum_ed + shift * o.sum);
        }
        self.sum_px += o.sum_px;
        self.above += o.above;
        self.near.extend(o.near);
        self.target = self.target.or(o.target);
        self.picked = self.picked.or(o.picked);
        self.top.extend(o.top);
        self.top
            .sort_by(|a, b| b.1.total_cmp(&a.1).then(a.0.cmp(&b.0)));
        self.top.truncate(k);
    }

    /// One plus the number of values strictly above the target's (all blocks added).
    pub fn rank(&self) -> u32 {
        let target = self.target.unwrap_or(f32::NAN);
        self.above + self.near.iter().filter(|&&v| v > target).count() as u32 + 1
    }

    /// `log Σ exp x`.
    pub fn log_sum_exp(&self) -> f64 {
        self.max as f64 + self.sum.ln()
    }

    /// Entropy of `softmax x` in nats.
    pub fn entropy(&self) -> f64 {
        self.sum.ln() - self.sum_ed / self.sum
    }

    /// Moves the running maximum up to `m`, rescaling the sums.
    fn raise_max(&mut self, m: f32) {
        if m <= self.max {
            return;
        }
        if self.sum > 0.0 {
            let shift = (self.max - m) as f64;
            let c = shift.exp();
            self.sum_ed = c * (self.sum_ed + shift * self.sum);
            self.sum *= c;
        }
        self.max = m;
    }

    /// Keeps the `k` largest values; `max` is the block's largest, which most blocks of a row
    /// have below the values kept already, so that they need no scan.
    fn add_top(&mut self, x: &[f32], first: usize, k: usize, max: f32) {
        let top = &mut self.top;
        if k == 0 || (top.len() == k && max <= top[k - 1].1) {
            return;
        }
        let mut floor = top.get(k - 1).map_or(f32::NEG_INFINITY, |t| t.1);
        // Once `top` holds k values only those above its floor enter, and the floor only rises:
        // a run of 16 values none of which is above it is skipped with one vectorized test.
        for (c, run) in x.chunks(16).enumerate() {
            if top.len() == k && !run.iter().fold(false, |any, &v| any | (v > floor)) {
                continue;
            }
            for (j, &v) in run.iter().enumerate() {
                if top.len() < k || v > floor {
                    let at = top.partition_point(|&(_, t)| t >= v);
                    top.insert(at, ((first + 16 * c + j) as u32, v));
                    top.truncate(k);
                    if top.len() == k {
                        floor = top[k - 1].1;
                    }
                }
            }
        }
    }
}

/// A block's maximum, `Σ p·x`, and counts of values above the target's band and from its
/// lower edge up.
struct BlockSums {
    max: f32,
    sum_px: f64,
    above: u32,
    from_near: u32,
}

const LANES: usize = 8;

fn block_sums(level: Level, x: &[f32], p: &[f32], near: f32, above: f32) -> BlockSums {
    #[cfg(target_arch = "x86_64")]
    if level.avx2() {
        // SAFETY: `Avx2` is only detected on CPUs that have AVX2 and FMA.
        return unsafe { avx2::block_sums(x, p, near, above) };
    }
    let _ = level;
    block_sums_any(x, p, near, above)
}

fn exp_sums(level: Level, x: &[f32], shift: f32) -> (f64, f64) {
    #[cfg(target_arch = "x86_64")]
    if level.avx2() {
        // SAFETY: as in `block_sums`.
        return unsafe { avx2::exp_sums(x, shift) };
    }
    let _ = level;
    exp_sums_any(x, shift)
}

fn block_sums_any(x: &[f32], p: &[f32], near: f32, hi: f32) -> BlockSums {
    let mut max = [f32::NEG_INFINITY; LANES];
    let mut px = [0f32; LANES];
    let mut above = [0u32; LANES];
    let mut from_near = [0u32; LANES];
    let (xc, xr) = x.split_at(x.len() - x.len() % LANES);
    let (pc, pr) = p.split_at(xc.len());
    for (xs, ps) in xc.chunks_exact(LANES).zip(pc.chunks_exact(LANES)) {
        for i in 0..LANES {
            max[i] = if xs[i] > max[i] { xs[i] } else { max[i] };
            px[i] = ps[i].mul_add(xs[i], px[i]);
            above[i] += (xs[i] > hi) as u32;
            from_near[i] += (xs[i] >= near) as u32;
        }
    }
    for (i, (&v, &pv)) in xr.iter().zip(pr).enumerate() {
        max[i] = if v > max[i] { v } else { max[i] };
        px[i] = pv.mul_add(v, px[i]);
        above[i] += (v > hi) as u32;
        from_near[i] += (v >= near) as u32;
    }
    block_result(max, px, above, from_near)
}

/// A block's sums from its lanes, combined in one order on every level.
fn block_result(
    max: [f32; LANES],
    px: [f32; LANES],
    above: [u32; LANES],
    from_near: [u32; LANES],
) -> BlockSums {
    BlockSums {
        max: max.iter().copied().fold(f32::NEG_INFINITY, f32::max),
        sum_px: px.iter().map(|&v| v as f64).sum(),
        above: above.iter().sum(),
        from_near: from_near.iter().sum(),
    }
}

/// `(Σ e, Σ e·(x − shift))` with `e = exp(x − shift)`, for `shift ≥ max x`.
fn exp_sums_any(x: &[f32], shift: f32) -> (f64, f64) {
    let mut s = [0f32; LANES];
    let mut sd = [0f32; LANES];
    let (xc, xr) = x.split_at(x.len() - x.len() % LANES);
    for xs in xc.chunks_exact(LANES) {
        for i in 0..LANES {
            let d = xs[i] - shift;
            let e = exp_nonpositive(d);
            s[i] += e;
            sd[i] = e.mul_add(d, sd[i]);
        }
    }
    for (i, &v) in xr.iter().enumerate() {
        let d = v - shift;
        let e = exp_nonpositive(d);
        s[i] += e;
        sd[i] = e.mul_add(d, sd[i]);
    }
    lane_sums(s, sd)
}

fn lane_sums(s: [f32; LANES], sd: [f32; LANES]) -> (f64, f64) {
    (
        s.iter().map(|&v| v as f64).sum(),
        sd.iter().map(|&v| v as f64).sum(),
    )
}

/// The portable code's operations on eight lanes at once, in the same order (its `mul_add`s
/// as fused multiply-adds, its other multiplies and adds unfused), so that both levels give
/// the same bits.
#[cfg(target_arch = "x86_64")]
mod avx2 {
    use std::arch::x86_64::*;

    use super::{block_result, lane_sums, BlockSums, LANES};

    #[target_feature(enable = "avx2,fma")]
    pub(super) fn block_sums(x: &[f32], p: &[f32], near: f32, hi: f32) -> BlockSums {
        let n = x.len() - x.len() % LANES;
        let (mut max, mut px) = (_mm256_set1_ps(f32::NEG_INFINITY), _mm256_setzero_ps());
        let (mut above, mut from_near) = (_mm256_setzero_si256(), _mm256_setzero_si256());
        let (vnear, vhi, one) = (
            _mm256_set1_ps(near),
            _mm256_set1_ps(hi),
            _mm256_set1_epi32(1),
        );
        for c in (0..n).step_by(LANES) {
            // SAFETY: `c + 8 ≤ n ≤ x.len()`, and `p` is as long as `x`.
            let (v, pv) = unsafe {
                (
                    _mm256_loadu_ps(x.as_ptr().add(c)),
                    _mm256_loadu_ps(p[..x.len()].as_ptr().add(c)),
                )
            };
            max = _mm256_blendv_ps(max, v, _mm256_cmp_ps::<_CMP_GT_OQ>(v, max));
            px = _mm256_fmadd_ps(pv, v, px);
            let gt = _mm256_castps_si256(_mm256_cmp_ps::<_CMP_GT_OQ>(v, vhi));
            above = _mm256_add_epi32(above, _mm256_and_si256(gt, one));
            let ge = _mm256_castps_si256(_mm256_cmp_ps::<_CMP_GE_OQ>(v, vnear));
            from_near = _mm256_add_epi32(from_near, _mm256_and_si256(ge, one));
        }
        let mut lanes = ([0f32; LANES], [0f32; LANES], [0u32; LANES], [0u32; LANES]);
        // SAFETY: each array holds 8 lanes.
        unsafe {
            _mm256_storeu_ps(lanes.0.as_mut_ptr(), max);
            _mm256_storeu_ps(lanes.1.as_mut_ptr(), px);
            _mm256_storeu_si256(lanes.2.as_mut_ptr().cast(), above);
            _mm256_storeu_si256(lanes.3.as_mut_ptr().cast(), from_near);
        }
        let (mut m, mut s, mut a, mut f) = lanes;
        for (i, (&v, &pv)) in x[n..].iter().zip(&p[n..x.len()]).enumerate() {
            m[i] = if v > m[i] { v } else { m[i] };
            s[i] = pv.mul_add(v, s[i]);
            a[i] += (v > hi) as u32;
            f[i] += (v >= near) as u32;
        }
        block_result(m, s, a, f)
    }

    #[target_feature(enable = "avx2,fma")]
    pub(super) fn exp_sums(x: &[f32], shift: f32) -> (f64, f64) {
        let n = x.len() - x.len() % LANES;
        let vshift = _mm256_set1_ps(shift);
        let (mut s, mut sd) = (_mm256_setzero_ps(), _mm256_setzero_ps());
        for c in (0..n).step_by(LANES) {
            // SAFETY: `c + 8 ≤ n ≤ x.len()`.
            let v = unsafe { _mm256_loadu_ps(x.as_ptr().add(c)) };
            let d = _mm256_sub_ps(v, vshift);
            let e = exp(d);
            s = _mm256_add_ps(s, e);
            sd = _mm256_fmadd_ps(e, d, sd);
        }
        let (mut ls, mut lsd) = ([0f32; LANES], [0f32; LANES]);
        // SAFETY: each array holds 8 lanes.
        unsafe {
            _mm256_storeu_ps(ls.as_mut_ptr(), s);
            _mm256_storeu_ps(lsd.as_mut_ptr(), sd);
        }
        for (i, &v) in x[n..].iter().enumerate() {
            let d = v - shift;
            let e = super::exp_nonpositive(d);
            ls[i] += e;
            lsd[i] = e.mul_add(d, lsd[i]);
        }
        lane_sums(ls, lsd)
    }

    /// [`super::exp_nonpositive`] on eight lanes.
    #[target_feature(enable = "avx2,fma")]
    fn exp(d: __m256) -> __m256 {
        let c = _mm256_set1_ps;
        let low = c(-87.0);
        let d = _mm256_blendv_ps(d, low, _mm256_cmp_ps::<_CMP_LT_OQ>(d, low));
        let t = _mm256_fmadd_ps(d, c(std::f32::consts::LOG2_E), c(12_582_912.0));
        let n = _mm256_sub_ps(t, c(12_582_912.0));
        let ni = _mm256_sub_epi32(_mm256_castps_si256(t), _mm256_set1_epi32(0x4B40_0000));
        let r = _mm256_fnmadd_ps(n, c(super::LN2_HI), d);
        let r = _mm256_fnmadd_ps(n, c(super::LN2_LO), r);
        let mut poly = c(super::EXP_POLY[0]);
        for &k in &super::EXP_POLY[1..] {
            poly = _mm256_fmadd_ps(poly, r, c(k));
        }
        let er = _mm256_add_ps(_mm256_fmadd_ps(poly, _mm256_mul_ps(r, r), r), c(1.0));
        let pow = _mm256_castsi256_ps(_mm256_slli_epi32::<23>(_mm256_add_epi32(
            ni,
            _mm256_set1_epi32(127),
        )));
        _mm256_mul_ps(er, pow)
    }
}

/// ln 2 in two parts, the first with few enough bits that `n · LN2_HI` is exact.
const LN2_HI: f32 = 0.693_359_4;
const LN2_LO: f32 = -2.121_944_4e-4;
/// `exp r ≈ 1 + r + r²·P(r)` on `|r| ≤ ln 2 / 2`: P's coefficients, highest power first.
const EXP_POLY: [f32; 6] = [
    1.987_569_1e-4,
    1.398_199_9e-3,
    8.333_452e-3,
    4.166_579_6e-2,
    1.666_666_5e-1,
    0.5,
];

/// `exp(d)` for `d ≤ 0` in f32, branch-free so that it vectorizes: `d = n·ln 2 + r` with
/// `|r| ≤ ln 2 / 2` (ln 2 split in two parts so that `r` is exact), a degree-6 polynomial for
/// `exp r` (the Cephes `expf` coefficients), and `2ⁿ` built from its exponent bits. Values
/// below −87 give `exp(−87)` ≈ 1.6e-38 (normal f32s only), which no sum notices.
#[inline(always)]
pub fn exp_nonpositive(d: f32) -> f32 {
    exp_reduced(if d < -87.0 { -87.0 } else { d })
}

/// The reduction and polynomial of [`exp_nonpositive`], for `−87 ≤ d ≤ 88`.
#[inline(always)]
pub(crate) fn exp_reduced(d: f32) -> f32 {
    const LOG2E: f32 = std::f32::consts::LOG2_E;
    // Round to nearest: adding 1.5·2²³ leaves the integer in the mantissa's low bits.
    let t = d.mul_add(LOG2E, 12_582_912.0);
    let n = t - 12_582_912.0;
    let ni = (t.to_bits() as i32).wrapping_sub(0x4B40_0000);
    let r = (-n).mul_add(LN2_LO, (-n).mul_add(LN2_HI, d));
    let mut poly = EXP_POLY[0];
    for &k in &EXP_POLY[1..] {
        poly = poly.mul_add(r, k);
    }
    let er = poly.mul_add(r * r, r) + 1.0;
    er * f32::from_bits(((ni + 127) as u32) << 23)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The reduction and polynomial that both `exp`s share, over the whole range they
    /// clamp to; then each one's clamps.
    #[test]
    fn exp_is_within_two_ulp_of_libm_over_its_range() {
        let mut worst = 0f64;
        let mut x = -87.0f32;
        while x <= 88.0 {
            let want = (x as f64).exp();
            worst = worst.max(((exp_reduced(x) as f64 - want) / want).abs());
            x += 0.000_37;
        }
        assert!(worst < 2.5e-7, "largest relative error {worst:e}");
        assert_eq!(exp_nonpositive(0.0), 1.0);
        assert!(exp_nonpositive(-1000.0) > 0.0 && exp_nonpositive(-1000.0) < 1e-37);
        let (low, high) = (crate::gated::exp(-1000.0), crate::gated::exp(1000.0));
        assert!(low > 0.0 && low < 1e-37 && high.is_finite() && high > 1e38);
    }
}
