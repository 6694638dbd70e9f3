//! Which container images the operator may run for a user's EventStore. Whoever may write an
//! EventStore picks the store-node and gateway images, and the archive Jobs run the store's image
//! with the selected tenants' tokens mounted: an operator-level allow-list of repositories (the
//! `--allowed-images` flag, the chart's `storeNodeImages`) keeps that to images the platform
//! team chose. Pure.

/// Whether `image` (`repository[:tag][@digest]`) is from one of `repositories`. An entry ending
/// in `/` allows every repository below it (`registry.example.com/team/`); any other entry is
/// one repository exactly (`ghcr.io/allsource/store-node` allows its tags and digests, not
/// `ghcr.io/allsource/store-node-evil`). An empty list allows every image.
pub fn allowed(repositories: &[String], image: &str) -> bool {
    if repositories.is_empty() {
        return true;
    }
    let repository = repository(image);
    repositories.iter().any(|r| {
        if r.ends_with('/') {
            repository.starts_with(r.as_str()) && !repository[r.len()..].contains("..")
        } else {
            repository == r
        }
    })
}

/// The repository part of an image reference: without `@digest`, and without a `:tag` after the
/// last `/` (a `:` before it is a registry port).
fn repository(image: &str) -> &str {
    let no_digest = image.split('@').next().unwrap_or(image);
    match no_digest.rfind(':') {
        Some(i) if !no_digest[i..].contains('/') => &no_digest[..i],
        _ => no_digest,
    }
}

/// Parses the `--allowed-images` flag: comma-separated repositories, blanks ignored.
pub fn parse(flag: &str) -> Vec<String> {
    flag.split(',')
        .map(str::trim)
        .filter(|s| !s.is_empty())
        .map(str::to_string)
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_listed_repositories_run() {
        let list = parse("ghcr.io/allsource/store-node, registry.local:5000/team/");
        for ok in [
            "ghcr.io/allsource/store-node",
            "ghcr.io/allsource/store-node:0.1.0",
            "ghcr.io/allsource/store-node@sha256:abc",
            "ghcr.io/allsource/store-node:0.1.0@sha256:abc",
            "registry.local:5000/team/store-node:1",
            "registry.local:5000/team/sub/gw",
        ] {
            assert!(allowed(&list, ok), "{ok}");
        }
        for refused in [
            "ghcr.io/allsource/store-node-evil:0.1.0",
            "ghcr.io/allsource/other:0.1.0",
            "docker.io/attacker/store-node:0.1.0",
            "registry.local:5000/teamx/store-node",
            "registry.local:5000/team/../other/x",
            "store-node:0.1.0",
        ] {
            assert!(!allowed(&list, refused), "{refused}");
        }
        assert!(allowed(&[], "anything:at-all"));
        assert_eq!(repository("registry.local:5000/x"), "registry.local:5000/x");
    }
}
