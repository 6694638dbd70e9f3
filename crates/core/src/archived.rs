//! The `archived` answers every backend gives for reads of a range that archival trimmed: pure
//! checks shared by the embedded engine's memory twin and the cloud backends (so they are not
//! behind the cloud backends' cargo features).

use crate::error::StoreError;
use crate::model::Direction;
use crate::store::StoreResult;

/// [`StoreError::Archived`] when a stream read over `range` (from `cloud::read_range`) came back with
/// versions missing at the start of the range: only a trim (archival) removes a stream's events
/// without moving its start version, and a trim removes a prefix of the stream. Forwards, a page
/// starting past the range's first version is refused with the first version it holds (or, when
/// the whole range is gone, the version after the range: the store holds none of the versions
/// before it). Backwards, a page holding none of the range is refused the same way; a page cut
/// short by the trim is returned, and the next page asks below it and is refused.
pub fn check_page_not_archived(
    range: (u64, u64),
    direction: Direction,
    page: &[crate::model::RecordedEvent],
) -> StoreResult<()> {
    let (lo, hi) = range;
    let first_available = match (direction, page.first()) {
        (Direction::Forwards, Some(e)) if e.version > lo => e.version,
        (_, None) => hi.saturating_add(1),
        _ => return Ok(()),
    };
    Err(StoreError::Archived {
        first_available,
        incarnation: 0,
        of_stream: true,
    })
}

/// [`StoreError::Archived`] when a tenant read starting at `from` found nothing at `from` and the
/// tenant's events before `trimmed_before` were archived and trimmed.
pub fn check_tenant_not_archived(from: u64, trimmed_before: u64) -> StoreResult<()> {
    if from < trimmed_before {
        return Err(StoreError::Archived {
            first_available: trimmed_before,
            incarnation: 0,
            of_stream: false,
        });
    }
    Ok(())
}
