//! One-time tickets for browser WebSockets: a browser cannot set an
//! `Authorization` header on a WebSocket, so it trades its access token for
//! a ticket (`POST /ws/ticket`) and puts that in the URL of `/ws/s2t`. A
//! ticket is good once, for [`TICKET_TTL`], on the gateway that issued it
//! (tickets live in its memory; only their SHA-256 is kept). A URL ends up
//! in logs and histories, which is why a ticket is short-lived and spent
//! on first use.

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::{Duration, Instant};
use uuid::Uuid;

pub const TICKET_TTL: Duration = Duration::from_secs(30);
/// Outstanding tickets per user; more are refused until some are used or
/// expire (a flood cannot grow the map without bound).
pub const PER_USER: usize = 20;
/// Outstanding tickets in all.
pub const TOTAL: usize = 100_000;

#[derive(Debug, PartialEq, Eq, thiserror::Error)]
pub enum TicketError {
    #[error("too many unused WebSocket tickets; use or let some expire (30 s) first")]
    TooMany,
    #[error("unknown, used or expired WebSocket ticket")]
    Invalid,
}

#[derive(Default)]
pub struct Tickets {
    map: Mutex<HashMap<Vec<u8>, (Uuid, Instant)>>,
}

impl Tickets {
    /// A new ticket for `user`, issued at `now`.
    pub fn issue(&self, user: Uuid, now: Instant) -> Result<String, TicketError> {
        let mut map = self.map.lock().expect("tickets");
        map.retain(|_, (_, until)| *until > now);
        if map.len() >= TOTAL || map.values().filter(|(u, _)| *u == user).count() >= PER_USER {
            return Err(TicketError::TooMany);
        }
        let ticket = crate::tokens::new_refresh_token();
        map.insert(crate::tokens::token_hash(&ticket), (user, now + TICKET_TTL));
        Ok(ticket)
    }

    /// The user a ticket was issued to, spending it.
    pub fn redeem(&self, ticket: &str, now: Instant) -> Result<Uuid, TicketError> {
        let mut map = self.map.lock().expect("tickets");
        match map.remove(&crate::tokens::token_hash(ticket)) {
            Some((user, until)) if until > now => Ok(user),
            _ => Err(TicketError::Invalid),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_ticket_is_good_once_and_only_until_it_expires() {
        let t = Tickets::default();
        let (alice, now) = (Uuid::new_v4(), Instant::now());
        let first = t.issue(alice, now).unwrap();
        assert_eq!(t.redeem(&first, now + Duration::from_secs(29)), Ok(alice));
        assert_eq!(t.redeem(&first, now), Err(TicketError::Invalid), "spent");
        let late = t.issue(alice, now).unwrap();
        assert_eq!(
            t.redeem(&late, now + TICKET_TTL),
            Err(TicketError::Invalid),
            "expired"
        );
        assert_eq!(t.redeem("made-up", now), Err(TicketError::Invalid));
        assert_eq!(t.redeem("", now), Err(TicketError::Invalid));
    }

    #[test]
    fn one_user_cannot_hold_more_than_twenty_and_expiry_frees_them() {
        let t = Tickets::default();
        let (mallory, bob, now) = (Uuid::new_v4(), Uuid::new_v4(), Instant::now());
        for _ in 0..PER_USER {
            t.issue(mallory, now).unwrap();
        }
        assert_eq!(t.issue(mallory, now), Err(TicketError::TooMany));
        assert!(t.issue(bob, now).is_ok(), "other users are not affected");
        assert!(t.issue(mallory, now + TICKET_TTL).is_ok());
    }
}
