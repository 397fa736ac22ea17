//! The drain period after SIGTERM. Callers still route to a draining proxy until the control
//! plane's withdrawal of its endpoint reaches them; answers meanwhile tell callers to go
//! elsewhere next time (HTTP/1 `Connection: close`, an HTTP/2 GOAWAY), the way Envoy's default
//! *gradual* drain strategy does: with a probability that rises linearly from 0 at SIGTERM to 1
//! at the end of the period. Callers that follow the control plane have moved away long before
//! most connections are told to close (a GOAWAY racing a busy client's next request is the one
//! way a drain can still lose a request), and the others reconnect spread over the period
//! rather than all at once.

use std::sync::OnceLock;
use std::time::Duration;

use tokio::time::Instant;

#[derive(Debug, Default)]
pub struct Drain {
    /// When draining started, and for how long answers are kept coming.
    started: OnceLock<(Instant, Duration)>,
}

impl Drain {
    /// Starts the drain period; there is no way back, and a second call changes nothing.
    pub fn start(&self, period: Duration) {
        let _ = self.started.set((Instant::now(), period));
    }

    pub fn draining(&self) -> bool {
        self.started.get().is_some()
    }

    /// Whether this answer should tell its caller to close the connection.
    pub fn close_connection(&self) -> bool {
        match self.started.get() {
            None => false,
            Some((at, period)) => close_with(at.elapsed(), *period, fastrand::u64(..)),
        }
    }
}

/// `draw` uniform over u64: true with probability `elapsed / period` (always once it is over,
/// and for a period of zero).
fn close_with(elapsed: Duration, period: Duration, draw: u64) -> bool {
    if elapsed >= period {
        return true;
    }
    // draw / MAX < elapsed / period, in integers (microseconds fit u128 products).
    u128::from(draw) * period.as_micros() < elapsed.as_micros() * u128::from(u64::MAX)
}

#[cfg(test)]
mod tests {
    use super::*;

    const S: Duration = Duration::from_secs(1);

    #[test]
    fn the_share_told_to_close_rises_linearly_over_the_period() {
        let period = 10 * S;
        // 1000 draws spread evenly (midpoints of 1000 equal slices).
        let told = |elapsed: Duration| {
            let slice = u64::MAX / 1000;
            (0..1000u64)
                .filter(|i| close_with(elapsed, period, i * slice + slice / 2))
                .count()
        };
        assert_eq!(told(Duration::ZERO), 0);
        assert_eq!(told(S), 100);
        assert_eq!(told(5 * S), 500);
        assert_eq!(told(10 * S), 1000);
        assert_eq!(told(60 * S), 1000);
        assert!(close_with(Duration::ZERO, Duration::ZERO, u64::MAX));
    }

    #[tokio::test(start_paused = true)]
    async fn draining_starts_once() {
        let drain = Drain::default();
        assert!(!drain.draining() && !drain.close_connection());
        drain.start(5 * S);
        drain.start(Duration::ZERO);
        assert!(drain.draining());
        tokio::time::sleep(5 * S).await;
        assert!(
            drain.close_connection(),
            "every answer once the period is over"
        );
    }
}
