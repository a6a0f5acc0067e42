//! The architecture of a model: its sizes and kinds, and where each parameter tensor
//! lives in the flat parameter vector.
//!
//! Every size is a plain `usize` so that one [`Shape`] describes a model whose sizes are
//! fixed at compile time (a `const` shape and `[f32; N]` buffers whose `N` is computed by
//! the `const fn`s below) as well as one sized at run time on the host (`Vec<f32>`).
//!
//! # Parameter layout
//!
//! All parameters live in one flat vector, in this order (the order of the weight blob,
//! of the exported Rust/C arrays and of [`Shape::tensors`]):
//!
//! | block | tensor | shape |
//! |---|---|---|
//! | normalisation (not trained) | per-feature offset, per-feature scale | `D`, `D` |
//! | encoder | for each hidden layer `l`: weight, bias | `h_l x h_{l-1}`, `h_l` (`h_0 = D`) |
//! | | direction head `Wmu`, `bmu` | `M x h_L`, `M` |
//! | | concentration head `wk`, `bk` | `1 x h_L`, `1` |
//! | segmenter | centres (raw; normalised in the forward pass) | `K x M` |
//! | | `ln kappa_s` | `1` |
//! | | mixing log-weights `ln pi_k` | `K` |
//! | decoder | layers `M -> h_L -> ... -> h_1`, each weight then bias | `h_{l} x h_{l+1}`, ... |
//! | | output layer | `D x h_1`, `D` |
//!
//! Weights are row-major `out x in`, the layout PyTorch's `nn.Linear` uses, so that the
//! forward pass is a run of dot products (nalgebra sees them as column-major `in x out`).
//! The decoder comes last so that the first [`Shape::inference_param_len`] values are
//! all that inference needs (a device that only clusters links no decoder weights), and
//! the segmenter sits between encoder and decoder so that every update scope is one
//! contiguous range of the vector (see [`Scope`]).

/// Most hidden layers an encoder may have (the decoder mirrors them).
pub const MAX_HIDDEN: usize = 4;

/// Largest posterior concentration the encoder emits; larger values are clamped (and
/// their gradient is zero). The special functions are accurate up to this value.
pub const KAPPA_MAX: f64 = 1.0e4;

/// Hidden-layer nonlinearity.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
#[cfg_attr(feature = "defmt", derive(defmt::Format))]
pub enum Activation {
    /// `max(0, x)`.
    Relu,
    /// `tanh(x)`.
    Tanh,
}

/// Family of the posterior `q(z|x)` on the sphere.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
#[cfg_attr(feature = "defmt", derive(defmt::Format))]
pub enum Posterior {
    /// von Mises-Fisher (the classical S-VAE posterior; rejection sampler).
    VonMisesFisher,
    /// Power Spherical (no rejection, no Bessel functions).
    PowerSpherical,
}

/// Decoder likelihood `p(x|z)`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
#[cfg_attr(feature = "defmt", derive(defmt::Format))]
pub enum Likelihood {
    /// Gaussian with a fixed sigma on the normalised inputs.
    Gaussian,
    /// Bernoulli on logits, for raw inputs in `[0, 1]`.
    Bernoulli,
}

/// Which parameters an optimiser step changes. Each scope is a contiguous range of the
/// parameter vector ([`Shape::scope_range`]), so optimiser state is sized to the scope.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
#[cfg_attr(feature = "defmt", derive(defmt::Format))]
pub enum Scope {
    /// Encoder, segmenter and decoder.
    Full,
    /// Encoder and segmenter; the decoder is frozen (its gradient is never formed).
    EncoderAndSegmenter,
    /// Cluster centres, concentration and weights only: no backprop through the network.
    SegmenterOnly,
}

/// One tensor of the parameter vector.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
#[cfg_attr(feature = "defmt", derive(defmt::Format))]
pub enum TensorId {
    /// Weight of encoder hidden layer `l` (0-based).
    EncoderWeight(u8),
    /// Bias of encoder hidden layer `l`.
    EncoderBias(u8),
    /// Direction head weight `Wmu`.
    MuWeight,
    /// Direction head bias `bmu`.
    MuBias,
    /// Concentration head weight `wk`.
    KappaWeight,
    /// Concentration head bias `bk`.
    KappaBias,
    /// Segmenter centres (raw, normalised in the forward pass).
    Centres,
    /// Segmenter `ln kappa_s`.
    LogKappaS,
    /// Segmenter mixing log-weights.
    LogWeights,
    /// Weight of decoder layer `l` (0-based, from the latent towards the output).
    DecoderWeight(u8),
    /// Bias of decoder layer `l`.
    DecoderBias(u8),
    /// Per-feature input offset (subtracted).
    NormOffset,
    /// Per-feature input scale (multiplied after the offset).
    NormScale,
}

impl core::fmt::Display for TensorId {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        match self {
            TensorId::EncoderWeight(l) => write!(f, "encoder.{l}.weight"),
            TensorId::EncoderBias(l) => write!(f, "encoder.{l}.bias"),
            TensorId::MuWeight => f.write_str("mu.weight"),
            TensorId::MuBias => f.write_str("mu.bias"),
            TensorId::KappaWeight => f.write_str("kappa.weight"),
            TensorId::KappaBias => f.write_str("kappa.bias"),
            TensorId::Centres => f.write_str("segmenter.centres"),
            TensorId::LogKappaS => f.write_str("segmenter.log_kappa"),
            TensorId::LogWeights => f.write_str("segmenter.log_weights"),
            TensorId::DecoderWeight(l) => write!(f, "decoder.{l}.weight"),
            TensorId::DecoderBias(l) => write!(f, "decoder.{l}.bias"),
            TensorId::NormOffset => f.write_str("norm.offset"),
            TensorId::NormScale => f.write_str("norm.scale"),
        }
    }
}

/// Where one tensor lives: `rows x cols` values (row-major) from `offset`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
#[cfg_attr(feature = "defmt", derive(defmt::Format))]
pub struct Tensor {
    /// Which tensor.
    pub id: TensorId,
    /// First index in the flat parameter vector.
    pub offset: usize,
    /// Rows (output size for weights; 1 for vectors).
    pub rows: usize,
    /// Columns (input size for weights; the length for vectors).
    pub cols: usize,
}

impl Tensor {
    /// Number of values.
    pub const fn len(&self) -> usize {
        self.rows * self.cols
    }
    /// True for an empty tensor (never produced by a valid shape).
    pub const fn is_empty(&self) -> bool {
        self.len() == 0
    }
    /// The index range in the flat parameter vector.
    pub const fn range(&self) -> core::ops::Range<usize> {
        self.offset..self.offset + self.len()
    }
}

/// Why a [`Shape`] is not a valid architecture.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, thiserror::Error)]
#[cfg_attr(feature = "defmt", derive(defmt::Format))]
pub enum ShapeError {
    /// Input size `D` is zero.
    #[error("input size must be at least 1")]
    NoInput,
    /// No hidden layer, more than [`MAX_HIDDEN`], or a zero width.
    #[error("need 1 to 4 hidden layers, each at least 1 wide")]
    BadHidden,
    /// Latent size `M` below 2 (the sphere `S^{M-1}` needs `M >= 2`) or above 64.
    #[error("latent size must be in 2..=64")]
    BadLatent,
    /// Cluster count `K` below 1 or above 255.
    #[error("cluster count must be in 1..=255")]
    BadClusters,
}

/// Sizes and kinds of a model. Cheap to copy; `const`-constructible.
///
/// ```
/// use hvae::shape::{Shape, Posterior};
/// // 64 inputs, one hidden layer of 32, latent S^7, 10 clusters.
/// const DIGITS: Shape = Shape::new(64, &[32], 8, 10).with_posterior(Posterior::PowerSpherical);
/// const P: usize = DIGITS.param_len();
/// let params = [0.0f32; P];
/// assert_eq!(params.len(), 2080 + 264 + 33 + 91 + 288 + 2112 + 128);
/// ```
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
#[cfg_attr(feature = "defmt", derive(defmt::Format))]
pub struct Shape {
    /// Input size `D`.
    pub input: usize,
    hidden: [usize; MAX_HIDDEN],
    depth: usize,
    /// Ambient latent size `M` (latent on `S^{M-1}`).
    pub latent: usize,
    /// Number of clusters `K`.
    pub clusters: usize,
    /// Hidden nonlinearity (encoder and decoder).
    pub activation: Activation,
    /// Posterior family.
    pub posterior: Posterior,
    /// Decoder likelihood.
    pub likelihood: Likelihood,
}

impl Shape {
    /// A shape with ReLU, von Mises-Fisher posterior and Gaussian likelihood. Hidden widths
    /// beyond [`MAX_HIDDEN`] are ignored and make [`Shape::validate`] fail; `const` users
    /// get that as a compile-time error through [`Shape::checked`].
    pub const fn new(input: usize, hidden: &[usize], latent: usize, clusters: usize) -> Shape {
        let mut h = [0usize; MAX_HIDDEN];
        let mut i = 0;
        while i < hidden.len() && i < MAX_HIDDEN {
            h[i] = hidden[i];
            i += 1;
        }
        // Too many layers: keep depth out of range so validation reports it.
        let depth = if hidden.len() > MAX_HIDDEN {
            MAX_HIDDEN + 1
        } else {
            hidden.len()
        };
        Shape {
            input,
            hidden: h,
            depth,
            latent,
            clusters,
            activation: Activation::Relu,
            posterior: Posterior::VonMisesFisher,
            likelihood: Likelihood::Gaussian,
        }
    }

    /// Same shape with another activation.
    pub const fn with_activation(mut self, a: Activation) -> Shape {
        self.activation = a;
        self
    }
    /// Same shape with another posterior family.
    pub const fn with_posterior(mut self, p: Posterior) -> Shape {
        self.posterior = p;
        self
    }
    /// Same shape with another likelihood.
    pub const fn with_likelihood(mut self, l: Likelihood) -> Shape {
        self.likelihood = l;
        self
    }
    /// Same layers for inputs of another size.
    pub const fn with_input(mut self, input: usize) -> Shape {
        self.input = input;
        self
    }

    /// Checks the sizes.
    pub const fn validate(&self) -> Result<(), ShapeError> {
        if self.input == 0 {
            return Err(ShapeError::NoInput);
        }
        if self.depth == 0 || self.depth > MAX_HIDDEN {
            return Err(ShapeError::BadHidden);
        }
        let mut i = 0;
        while i < self.depth {
            if self.hidden[i] == 0 {
                return Err(ShapeError::BadHidden);
            }
            i += 1;
        }
        if self.latent < 2 || self.latent > 64 {
            return Err(ShapeError::BadLatent);
        }
        if self.clusters == 0 || self.clusters > 255 {
            return Err(ShapeError::BadClusters);
        }
        Ok(())
    }

    /// The shape itself, or a compile-time error when used in a `const` and invalid.
    pub const fn checked(self) -> Shape {
        match self.validate() {
            Ok(()) => self,
            Err(_) => panic!("invalid hvae::Shape"),
        }
    }

    /// Number of encoder hidden layers (the decoder has as many).
    pub const fn depth(&self) -> usize {
        self.depth
    }

    /// Width of encoder hidden layer `l` (0-based), or 0 past the last.
    pub const fn hidden(&self, l: usize) -> usize {
        if l < self.depth && l < MAX_HIDDEN {
            self.hidden[l]
        } else {
            0
        }
    }

    /// Width of the last encoder hidden layer (`h_L`).
    pub const fn last_hidden(&self) -> usize {
        if self.depth == 0 {
            0
        } else {
            self.hidden(self.depth - 1)
        }
    }

    /// Multiply-adds of the encoder's dense layers: `sum_l h_l h_{l-1} + M h_L` (the
    /// hidden layers and the mean direction's layer; also the number of their weights).
    pub const fn encoder_macs(&self) -> usize {
        let mut n = 0;
        let mut l = 0;
        while l < self.depth() {
            let (o, i) = self.encoder_layer(l);
            n += o * i;
            l += 1;
        }
        n + self.latent * self.last_hidden()
    }

    /// Multiply-adds of one encode+segment: [`Shape::encoder_macs`], the kappa head
    /// (`h_L`) and the segmenter's dot products (`K M`); what an instructions-per-MAC
    /// figure divides by.
    pub const fn segment_macs(&self) -> usize {
        self.encoder_macs() + self.last_hidden() + self.clusters * self.latent
    }

    /// Sum of the encoder hidden widths.
    pub const fn hidden_sum(&self) -> usize {
        let mut s = 0;
        let mut i = 0;
        while i < self.depth && i < MAX_HIDDEN {
            s += self.hidden[i];
            i += 1;
        }
        s
    }

    /// Largest width anywhere in the network (input, hidden, latent, clusters).
    pub const fn max_width(&self) -> usize {
        let mut w = self.input;
        let mut i = 0;
        while i < self.depth && i < MAX_HIDDEN {
            if self.hidden[i] > w {
                w = self.hidden[i];
            }
            i += 1;
        }
        if self.latent > w {
            w = self.latent;
        }
        if self.clusters > w {
            w = self.clusters;
        }
        w
    }

    /// Input width of encoder layer `l` (`D` for the first).
    const fn enc_in(&self, l: usize) -> usize {
        if l == 0 {
            self.input
        } else {
            self.hidden(l - 1)
        }
    }

    /// `(out, in)` of decoder layer `l`: `M -> h_L -> ... -> h_1 -> D`.
    pub const fn decoder_layer(&self, l: usize) -> (usize, usize) {
        let inp = if l == 0 {
            self.latent
        } else {
            self.hidden(self.depth - l)
        };
        let out = if l == self.depth {
            self.input
        } else {
            self.hidden(self.depth - 1 - l)
        };
        (out, inp)
    }

    /// `(out, in)` of encoder hidden layer `l`.
    pub const fn encoder_layer(&self, l: usize) -> (usize, usize) {
        (self.hidden(l), self.enc_in(l))
    }

    /// Parameters (weights and biases) of the first `n` encoder hidden layers, or of the
    /// first `n` decoder layers. Inlined, as the two loops it replaced were: the sizes it
    /// sums are read on the device's inference path (`Model::has_decoder`).
    #[inline(always)]
    const fn layers_len(&self, decoder: bool, n: usize) -> usize {
        let mut len = 0;
        let mut l = 0;
        while l < n {
            let (o, i) = if decoder {
                self.decoder_layer(l)
            } else {
                self.encoder_layer(l)
            };
            len += o * i + o;
            l += 1;
        }
        len
    }

    /// Start of encoder hidden layer `l`'s weights (its bias follows them); `l = depth`:
    /// where the heads start.
    pub const fn encoder_layer_offset(&self, l: usize) -> usize {
        self.encoder_offset() + self.layers_len(false, l)
    }

    /// Start of decoder layer `l`'s weights (its bias follows them).
    pub const fn decoder_layer_offset(&self, l: usize) -> usize {
        self.decoder_offset() + self.layers_len(true, l)
    }

    /// Parameters of the encoder (hidden layers and both heads).
    pub const fn encoder_len(&self) -> usize {
        let h = self.last_hidden();
        self.layers_len(false, self.depth) + self.latent * h + self.latent + h + 1
    }

    /// Parameters of the segmenter (`K*M + 1 + K`).
    pub const fn segmenter_len(&self) -> usize {
        self.clusters * self.latent + 1 + self.clusters
    }

    /// Parameters of the decoder.
    pub const fn decoder_len(&self) -> usize {
        self.layers_len(true, self.depth + 1)
    }

    /// Trainable parameters (encoder + segmenter + decoder).
    pub const fn trainable_len(&self) -> usize {
        self.encoder_len() + self.segmenter_len() + self.decoder_len()
    }

    /// Length of the whole parameter vector: the `2 D` normalisation constants plus the
    /// trainable parameters.
    pub const fn param_len(&self) -> usize {
        2 * self.input + self.trainable_len()
    }

    /// Parameters needed for inference (`encode`/`segment`): normalisation, encoder and
    /// segmenter, without the decoder. They are a prefix of the parameter vector.
    pub const fn inference_param_len(&self) -> usize {
        self.decoder_offset()
    }

    /// Start of the normalisation block (always 0).
    pub const fn norm_offset(&self) -> usize {
        0
    }

    /// Start of the encoder block.
    pub const fn encoder_offset(&self) -> usize {
        2 * self.input
    }

    /// Start of the segmenter block.
    pub const fn segmenter_offset(&self) -> usize {
        self.encoder_offset() + self.encoder_len()
    }

    /// Start of the decoder block.
    pub const fn decoder_offset(&self) -> usize {
        self.segmenter_offset() + self.segmenter_len()
    }

    /// The contiguous parameter range a scope trains.
    pub const fn scope_range(&self, scope: Scope) -> core::ops::Range<usize> {
        match scope {
            Scope::Full => self.encoder_offset()..self.param_len(),
            Scope::EncoderAndSegmenter => self.encoder_offset()..self.decoder_offset(),
            Scope::SegmenterOnly => self.segmenter_offset()..self.decoder_offset(),
        }
    }

    /// Number of tensors in the layout.
    pub const fn tensor_count(&self) -> usize {
        // norm 2; encoder: 2 per layer + 4 heads; segmenter 3; decoder 2 per layer (depth + 1)
        2 + 2 * self.depth + 4 + 3 + 2 * (self.depth + 1)
    }

    /// Tensor `i` of the layout (in layout order), or `None` past the end.
    pub const fn tensor(&self, i: usize) -> Option<Tensor> {
        let d = self.input;
        let mut walk = Walk {
            want: i,
            at: 0,
            offset: 0,
            found: None,
        };
        // Normalisation, then the encoder's hidden layers.
        walk.add(TensorId::NormOffset, 1, d);
        walk.add(TensorId::NormScale, 1, d);
        let mut l = 0;
        while l < self.depth {
            let (o, n) = self.encoder_layer(l);
            walk.add(TensorId::EncoderWeight(l as u8), o, n);
            walk.add(TensorId::EncoderBias(l as u8), 1, o);
            l += 1;
        }
        // The heads and the segmenter.
        let (h, m, k) = (self.last_hidden(), self.latent, self.clusters);
        walk.add(TensorId::MuWeight, m, h);
        walk.add(TensorId::MuBias, 1, m);
        walk.add(TensorId::KappaWeight, 1, h);
        walk.add(TensorId::KappaBias, 1, 1);
        walk.add(TensorId::Centres, k, m);
        walk.add(TensorId::LogKappaS, 1, 1);
        walk.add(TensorId::LogWeights, 1, k);
        // The decoder.
        let mut l = 0;
        while l <= self.depth {
            let (o, n) = self.decoder_layer(l);
            walk.add(TensorId::DecoderWeight(l as u8), o, n);
            walk.add(TensorId::DecoderBias(l as u8), 1, o);
            l += 1;
        }
        walk.found
    }

    /// All tensors, in layout order.
    pub fn tensors(&self) -> impl Iterator<Item = Tensor> + '_ {
        (0..self.tensor_count()).filter_map(move |i| self.tensor(i))
    }

    /// The tensor with this id, if the shape has it.
    pub fn find(&self, id: TensorId) -> Option<Tensor> {
        self.tensors().find(|t| t.id == id)
    }
}

/// A walk through the layout in order, each tensor at the offset after the last,
/// keeping tensor number `want`.
struct Walk {
    want: usize,
    at: usize,
    offset: usize,
    found: Option<Tensor>,
}

impl Walk {
    /// The next tensor, `id` of `rows x cols`.
    const fn add(&mut self, id: TensorId, rows: usize, cols: usize) {
        if self.at == self.want {
            self.found = Some(Tensor {
                id,
                offset: self.offset,
                rows,
                cols,
            });
        }
        self.at += 1;
        self.offset += rows * cols;
    }
}

/// Shapes the unit tests of layouts go over: one hidden layer, two, and four with the
/// smallest latent sphere.
#[cfg(test)]
pub(crate) const TEST_SHAPES: [Shape; 3] = [
    Shape::new(64, &[32], 8, 10),
    Shape::new(5, &[7, 3], 3, 2),
    Shape::new(2, &[4, 4, 4, 4], 2, 1),
];

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn layout_is_contiguous_and_complete() {
        for shape in TEST_SHAPES {
            shape.validate().unwrap();
            let mut off = 0;
            for t in shape.tensors() {
                assert_eq!(t.offset, off, "{t:?}");
                assert!(!t.is_empty());
                off += t.len();
            }
            assert_eq!(off, shape.param_len());
            assert_eq!(shape.tensors().count(), shape.tensor_count());
            assert_eq!(
                shape.find(TensorId::Centres).unwrap().offset,
                shape.segmenter_offset()
            );
            assert_eq!(
                shape.find(TensorId::DecoderWeight(0)).unwrap().offset,
                shape.decoder_offset()
            );
            assert_eq!(
                shape.find(TensorId::NormOffset).unwrap().offset,
                shape.norm_offset()
            );
            // Every dense layer starts where the tensor table puts its weight.
            for l in 0..shape.depth() {
                let w = shape.find(TensorId::EncoderWeight(l as u8)).unwrap();
                assert_eq!(shape.encoder_layer_offset(l), w.offset, "encoder {l}");
            }
            assert_eq!(
                shape.encoder_layer_offset(shape.depth()),
                shape.find(TensorId::MuWeight).unwrap().offset
            );
            for l in 0..=shape.depth() {
                let w = shape.find(TensorId::DecoderWeight(l as u8)).unwrap();
                assert_eq!(shape.decoder_layer_offset(l), w.offset, "decoder {l}");
            }
            // The decoder mirrors the encoder and ends at D.
            assert_eq!(shape.decoder_layer(0).1, shape.latent);
            assert_eq!(shape.decoder_layer(shape.depth()).0, shape.input);
        }
    }

    #[test]
    fn digits_sizes() {
        let s = Shape::new(64, &[32], 8, 10);
        assert_eq!(s.encoder_len(), 64 * 32 + 32 + 8 * 32 + 8 + 32 + 1);
        assert_eq!(s.segmenter_len(), 10 * 8 + 1 + 10);
        assert_eq!(s.decoder_len(), 32 * 8 + 32 + 64 * 32 + 64);
        assert_eq!(s.scope_range(Scope::SegmenterOnly).len(), 91);
        // Encoder 64x32 + 32x8, kappa head 32, segmenter 10x8.
        assert_eq!(s.encoder_macs(), 2048 + 256);
        assert_eq!(s.segment_macs(), 2048 + 256 + 32 + 80);
        let two = Shape::new(6, &[5, 4], 3, 2);
        assert_eq!(two.encoder_macs(), 6 * 5 + 5 * 4 + 4 * 3);
        assert_eq!(two.segment_macs(), 6 * 5 + 5 * 4 + 4 * 3 + 4 + 2 * 3);
    }

    #[test]
    fn invalid_shapes_are_reported() {
        assert_eq!(
            Shape::new(0, &[3], 3, 2).validate(),
            Err(ShapeError::NoInput)
        );
        assert_eq!(
            Shape::new(3, &[], 3, 2).validate(),
            Err(ShapeError::BadHidden)
        );
        assert_eq!(
            Shape::new(3, &[1, 1, 1, 1, 1], 3, 2).validate(),
            Err(ShapeError::BadHidden)
        );
        assert_eq!(
            Shape::new(3, &[0], 3, 2).validate(),
            Err(ShapeError::BadHidden)
        );
        assert_eq!(
            Shape::new(3, &[3], 1, 2).validate(),
            Err(ShapeError::BadLatent)
        );
        assert_eq!(
            Shape::new(3, &[3], 3, 0).validate(),
            Err(ShapeError::BadClusters)
        );
    }
}
