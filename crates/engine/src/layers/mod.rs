//! Building blocks that several networks share: the ResNet block and
//! attention (`blocks`), the UNet's cross-attention transformer
//! (`transformer2d`), and DiT modulation and norms (`modulation`). They are
//! made of the kernels' primitive layers and know no model's config.

pub mod blocks;
pub(crate) mod modulation;
pub(crate) mod transformer2d;
