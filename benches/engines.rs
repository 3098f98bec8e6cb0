//! placeholder until the engines benches land
fn main() {}
