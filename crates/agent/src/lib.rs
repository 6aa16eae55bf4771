//! twill agent (being written).
