//! allsource-operator: reconciles EventStore, Tenant and ArchivePolicy resources.

fn main() {
    println!("allsource-operator {}", env!("CARGO_PKG_VERSION"));
}
