//! Placeholder: filled in by the ring work of issue 16.
