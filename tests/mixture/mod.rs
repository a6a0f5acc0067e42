//! A synthetic vMF mixture with known labels, shared by the trainer tests, and the
//! accuracy of a clustering of it.

use hvae::shape::Posterior;
use rand_core::SeedableRng;
use rand_xoshiro::Xoshiro256PlusPlus;

/// The mixture's dimension.
pub const D: usize = 8;
/// Its number of clusters.
pub const K: usize = 4;

/// `n` points of a mixture of `K` vMF laws on S^{D-1} (concentration 40) with labels.
pub fn mixture(n: usize, seed: u64) -> (Vec<[f32; D]>, Vec<usize>) {
    let mut rng = Xoshiro256PlusPlus::seed_from_u64(seed);
    let mut centres = [[0f32; D]; K];
    for (k, c) in centres.iter_mut().enumerate() {
        // Orthogonal-ish directions: a basis vector plus a little noise.
        c[k * 2] = 1.0;
        for v in c.iter_mut() {
            *v += 0.2 * hvae::dist::rng::standard_normal::<f32, _>(&mut rng);
        }
        let n = c.iter().map(|v| v * v).sum::<f32>().sqrt();
        c.iter_mut().for_each(|v| *v /= n);
    }
    let mut xs = Vec::with_capacity(n);
    let mut ys = Vec::with_capacity(n);
    for _ in 0..n {
        let k = (hvae::dist::rng::uniform::<f64, _>(&mut rng) * K as f64) as usize % K;
        let mut z = [0f32; D];
        Posterior::VonMisesFisher
            .sample(&centres[k], 40.0f32, &mut rng, &mut z)
            .unwrap();
        xs.push(z);
        ys.push(k);
    }
    (xs, ys)
}

/// ACC under the best matching of clusters to classes (all K! = 24 permutations).
pub fn accuracy(pred: &[usize], truth: &[usize]) -> f64 {
    let mut table = [[0usize; K]; K];
    for (&p, &t) in pred.iter().zip(truth) {
        table[p][t] += 1;
    }
    let mut best = 0;
    let mut perm = [0usize, 1, 2, 3];
    heap_permutations(&mut perm, K, &mut |p| {
        best = best.max((0..K).map(|c| table[c][p[c]]).sum::<usize>());
    });
    best as f64 / pred.len() as f64
}

fn heap_permutations(v: &mut [usize; K], n: usize, f: &mut impl FnMut(&[usize; K])) {
    if n == 1 {
        f(v);
        return;
    }
    for i in 0..n {
        heap_permutations(v, n - 1, f);
        let j = if n.is_multiple_of(2) { i } else { 0 };
        v.swap(j, n - 1);
    }
}
