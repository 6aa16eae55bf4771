//! twill backend (being written).
