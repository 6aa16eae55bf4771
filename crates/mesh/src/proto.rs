//! Placeholder: filled in by the proto work of issue 16.
