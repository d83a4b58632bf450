//! The classifier cascade: exact-match cache → megaflow cache → slow path.
