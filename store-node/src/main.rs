//! store-node binary.

fn main() {
    println!("store-node {}", env!("CARGO_PKG_VERSION"));
}
