//! Placeholder: filled in by the topology work of issue 16.
