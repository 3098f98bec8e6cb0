//! placeholder until the resolvers benches land
fn main() {}
