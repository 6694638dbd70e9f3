//! When the next scheduled run of an ArchivePolicy starts: the 5-field cron expression (or a
//! `@daily`-style nickname, as the Kubernetes CronJob controller accepts) evaluated in the
//! policy's IANA time zone, returned in UTC for `status.nextRunTime`. Pure: the caller passes the
//! clock in; it must never read the clock or schedule anything itself.

use chrono::{DateTime, Utc};
use chrono_tz::Tz;
use croner::parser::{CronParser, Seconds};
use croner::Cron;

/// Why a schedule or time zone cannot be used.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ScheduleError {
    /// The cron expression does not parse.
    #[error("schedule {schedule:?}: {message}")]
    Cron {
        /// The expression.
        schedule: String,
        /// What the parser said.
        message: String,
    },
    /// The time zone is not in the IANA database.
    #[error("timeZone {0:?} is not an IANA time zone")]
    TimeZone(String),
    /// The expression never fires (e.g. 30 February).
    #[error("schedule {0:?} has no future run")]
    NoNextRun(String),
}

/// A parsed schedule in its time zone.
#[derive(Debug, Clone)]
pub struct Schedule {
    cron: Cron,
    tz: Tz,
    text: String,
}

impl Schedule {
    /// Parses `schedule` (5 fields, no seconds, or a nickname) in time zone `tz`.
    pub fn parse(schedule: &str, tz: &str) -> Result<Self, ScheduleError> {
        let tz: Tz = tz
            .parse()
            .map_err(|_| ScheduleError::TimeZone(tz.to_string()))?;
        let cron = CronParser::builder()
            .seconds(Seconds::Disallowed)
            .build()
            .parse(schedule)
            .map_err(|e| ScheduleError::Cron {
                schedule: schedule.to_string(),
                message: e.to_string(),
            })?;
        Ok(Self {
            cron,
            tz,
            text: schedule.to_string(),
        })
    }

    /// The first run strictly after `now`, in UTC.
    pub fn next_after(&self, now: DateTime<Utc>) -> Result<DateTime<Utc>, ScheduleError> {
        self.cron
            .find_next_occurrence(&now.with_timezone(&self.tz), false)
            .map(|t| t.with_timezone(&Utc))
            .map_err(|_| ScheduleError::NoNextRun(self.text.clone()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn at(s: &str) -> DateTime<Utc> {
        DateTime::parse_from_rfc3339(s).unwrap().with_timezone(&Utc)
    }

    #[test]
    fn nightly_in_berlin_follows_daylight_saving() {
        let s = Schedule::parse("0 2 * * *", "Europe/Berlin").unwrap();
        // Winter: 02:00 CET is 01:00 UTC.
        assert_eq!(
            s.next_after(at("2026-11-24T16:00:00Z")).unwrap(),
            at("2026-11-25T01:00:00Z")
        );
        // Summer: 02:00 CEST is 00:00 UTC.
        assert_eq!(
            s.next_after(at("2026-07-01T12:00:00Z")).unwrap(),
            at("2026-07-02T00:00:00Z")
        );
    }

    #[test]
    fn nicknames_and_utc() {
        let s = Schedule::parse("@hourly", "UTC").unwrap();
        assert_eq!(
            s.next_after(at("2026-11-24T16:00:00Z")).unwrap(),
            at("2026-11-24T17:00:00Z")
        );
    }

    #[test]
    fn refuses_bad_input() {
        assert!(matches!(
            Schedule::parse("0 2 * * *", "Mars/Olympus"),
            Err(ScheduleError::TimeZone(_))
        ));
        assert!(matches!(
            Schedule::parse("61 2 * * *", "UTC"),
            Err(ScheduleError::Cron { .. })
        ));
        assert!(matches!(
            Schedule::parse("0 0 0 * * *", "UTC"),
            Err(ScheduleError::Cron { .. })
        ));
    }
}
