//! Client connections over plain TCP.

mod replay;

pub(crate) use replay::Replay;
