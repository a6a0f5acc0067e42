//! Distributions: random variates with bounded work, the special functions their
//! densities need, and the two posterior families on the unit sphere.
//!
//! | module | what it holds |
//! |---|---|
//! | [`rng`] | uniform, normal, Gamma and Beta variates from any `rand_core` generator |
//! | [`special`] | `ln Gamma` and its derivatives, `ln I_nu`, the Bessel ratio, the incomplete beta function |
//! | [`sphere`] | von Mises-Fisher and Power Spherical: KL, sampling, reparameterised gradients |

pub mod rng;
pub mod special;
pub mod sphere;
