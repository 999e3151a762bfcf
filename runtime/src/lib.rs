//! kiln: a static-graph compiler and runtime for deep learning.
//!
//! Define a model once as a graph with [`GraphBuilder`](crate::prelude::GraphBuilder); shape and dtype
//! mistakes are reported when each op is added, at your source line. Run it
//! in a [`Session`] with feeds and fetches, save it as a `.kiln` file, and
//! load it back without executing anything.
//!
//! ```
//! use kiln::prelude::*;
//!
//! let g = GraphBuilder::new();
//! let x = g.placeholder("x", DType::F32, shape!["batch", 4])?;
//! let h = g.dense("fc1", x, 8, Activation::Relu)?;
//! let y = g.linear("fc2", h, 3)?.softmax(-1)?.named("probs")?;
//! g.output(y)?;
//! let mut sess = Session::new(&g.into_graph(), Device::default())?;
//! let input = Array::from_vec(vec![2, 4], vec![0.5f32; 8]).unwrap();
//! let out = sess.run(&[("x", &input)], &["probs"])?;
//! assert_eq!(out[0].shape(), &[2, 3]);
//! # Ok::<(), kiln::Error>(())
//! ```
#![warn(missing_docs)]

pub mod aot;
pub mod checkpoint;
pub mod datasets;
pub mod device;
pub mod env;
pub mod error;
pub mod npy;
pub mod onnx;
pub mod session;

pub use device::Device;
pub use error::{Error, Result};
pub use kiln_graph as graph;
pub use kiln_graph::shape;
pub use session::{
    DeviceTensor, MatmulPrecision, ProfileEvent, Session, SessionOptions, DEFAULT_MAX_PROGRAMS,
};

/// What a model definition needs: `use kiln::prelude::*`.
pub mod prelude {
    pub use crate::device::Device;
    pub use crate::error::{Error, Result};
    pub use crate::onnx::FromOnnx;
    pub use crate::session::{Session, SessionOptions};
    pub use kiln_graph::{
        one_hot, shape, softmax_cross_entropy, sparse_softmax_cross_entropy, Activation, Array,
        Conv2dOptions, DType, Dim, DimExpr, Graph, GraphBuilder, Init, NodeId, Shape, SliceAxis,
        Tensor, TensorType, Window2d,
    };
}
