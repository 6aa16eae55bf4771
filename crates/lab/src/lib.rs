//! twill lab (being written).
