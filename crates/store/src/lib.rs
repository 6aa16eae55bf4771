//! twill store (being written).
