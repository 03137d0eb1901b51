//! The load bench: placeholder, filled in below.
fn main() {}
