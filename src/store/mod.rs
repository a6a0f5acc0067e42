//! Storage and formats: a model's weights as bytes, and a learning device's state in
//! flash.
//!
//! | module | what it holds |
//! |---|---|
//! | [`blob`] | the versioned weight blob (wire, flash, files) |
//! | [`checkpoint`] | weights, optimiser state and step counts in two slots of NOR flash |

pub mod blob;
pub mod checkpoint;
