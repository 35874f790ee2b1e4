use super::*;
use crate::lease::slot::WaitError;

fn far() -> Instant {
    Instant::now() + Duration::from_secs(60)
}

use tokio::time::Instant;

#[test]
fn one_caller_fetches_and_a_cancelled_fetch_lets_the_next_one() {
    let leases = Leases::new(Lease::new(10), 100);
    let slot = leases.slot(None, 0, || b"k".to_vec());
    let Spend::Fetch(guard) = slot.spend(1, 0) else {
        panic!("an empty lease asks for a fetch")
    };
    assert!(matches!(slot.spend(1, 0), Spend::Wait));
    drop(guard); // cancelled
    let Spend::Fetch(guard) = slot.spend(1, 0) else {
        panic!("after a cancelled fetch the next caller fetches")
    };
    assert_eq!(guard.granted(10, 1, 5_000, 0, 0, 1_000), (9, 0));
    for left in (0..9).rev() {
        assert!(matches!(slot.spend(1, 10), Spend::Paid { remaining, .. } if remaining == left));
    }
    assert!(matches!(slot.spend(1, 10), Spend::Fetch(_)));
}

#[tokio::test]
async fn waiters_share_a_failed_fetch_and_a_deadline_bounds_the_wait() {
    let leases = Leases::new(Lease::new(10), 100);
    let slot = leases.slot(None, 0, || b"k".to_vec());
    let Spend::Fetch(guard) = slot.spend(1, 0) else {
        panic!()
    };
    let waiter = {
        let slot = slot.clone();
        tokio::spawn(async move { slot.wait_for_fetch(far()).await })
    };
    tokio::task::yield_now().await;
    guard.failed();
    assert!(matches!(waiter.await.unwrap(), Err(WaitError::FetchFailed)));
    let Spend::Fetch(_guard) = slot.spend(1, 0) else {
        panic!()
    };
    let soon = Instant::now() + Duration::from_millis(10);
    assert!(matches!(
        slot.wait_for_fetch(soon).await,
        Err(WaitError::Deadline)
    ));
}

#[test]
fn expired_leases_are_dropped_and_denials_are_remembered() {
    let leases = Leases::new(Lease::new(10), 100);
    let slot = leases.slot(Some(7), 0, || b"k".to_vec());
    let Spend::Fetch(guard) = slot.spend(1, 0) else {
        panic!()
    };
    guard.granted(10, 1, 0, 0, 0, 1_000);
    assert!(matches!(slot.spend(1, 999), Spend::Paid { .. }));
    let Spend::Fetch(guard) = slot.spend(1, 1_000) else {
        panic!("an expired lease holds nothing")
    };
    guard.denied(500, 1_000);
    assert!(matches!(
        slot.spend(1, 1_200),
        Spend::Denied { retry_after: 300 }
    ));
    assert!(matches!(slot.spend(1, 1_500), Spend::Fetch(_)));
}

#[test]
fn a_low_lease_is_topped_up_once_while_it_still_pays() {
    let leases = Leases::new(Lease::new(8).max_hold(Duration::from_nanos(1_000)), 100);
    let slot = leases.slot(None, 0, || b"k".to_vec());
    let Spend::Fetch(guard) = slot.spend(1, 0) else {
        panic!()
    };
    guard.granted(8, 1, 0, 0, 0, 1_000);
    // 7 cells; the top-up starts below 8 / 4 = 2 cells, exactly once.
    let mut top_ups = Vec::new();
    for _ in 0..6 {
        top_ups.extend(leases.try_pay(None, 1, 10).unwrap().top_up);
    }
    assert_eq!(top_ups.len(), 1);
    top_ups.pop().unwrap().topped_up(8, 0, 20, 20, 1_000);
    // The top-up joined the one cell left: 9 more requests pay, the 10th does not.
    for _ in 0..9 {
        assert!(leases.try_pay(None, 1, 30).is_some());
    }
    assert!(leases.try_pay(None, 1, 30).is_none());
}

#[test]
fn a_lease_in_use_is_renewed_in_the_last_quarter_of_its_hold() {
    let leases = Leases::new(Lease::new(100).max_hold(Duration::from_nanos(1_000)), 100);
    let slot = leases.slot(None, 0, || b"k".to_vec());
    let Spend::Fetch(guard) = slot.spend(1, 0) else {
        panic!()
    };
    guard.granted(100, 1, 0, 0, 0, 1_000);
    // Plenty of cells and more than a quarter of the hold ahead: no top-up.
    for now in [1, 300, 749] {
        assert!(
            leases.try_pay(None, 1, now).unwrap().top_up.is_none(),
            "{now}"
        );
    }
    // From 750 (a quarter of the hold before 1,000) the lease is renewed, once, and not as
    // one running low.
    let paid = leases.try_pay(None, 1, 750).unwrap();
    assert!(!paid.running_low);
    let renewal = paid
        .top_up
        .expect("renewed in the last quarter of its hold");
    assert!(leases.try_pay(None, 1, 800).unwrap().top_up.is_none());
    renewal.topped_up(100, 0, 760, 770, 1_000);
    // The 94 cells left expire at 1,000; the renewal's 100 are held from 760.
    let paid = leases.try_pay(None, 1, 1_000).unwrap();
    assert_eq!((paid.from_old, paid.remaining), (0, 99));
    assert!(paid.top_up.is_none(), "the renewed lease is young");
    let paid = leases.try_pay(None, 1, 1_510).unwrap();
    assert!(paid.top_up.is_some(), "and renewed in its own last quarter");
}

#[test]
fn cells_left_at_a_top_up_keep_their_own_expiry() {
    let leases = Leases::new(Lease::new(8).max_hold(Duration::from_nanos(1_000)), 100);
    let slot = leases.slot(None, 0, || b"k".to_vec());
    let Spend::Fetch(guard) = slot.spend(1, 0) else {
        panic!()
    };
    // Sent at 0, held 1,000: 7 cells left after the request, dropped at 1,000.
    guard.granted(8, 1, 0, 0, 0, 1_000);
    let mut top_up = None;
    for _ in 0..6 {
        top_up = top_up.or(leases.try_pay(None, 1, 900).unwrap().top_up);
    }
    // One old cell left; a top-up sent at 900 brings 8, held until 1,900.
    top_up.unwrap().topped_up(8, 0, 900, 910, 1_000);
    let paid = leases.try_pay(None, 1, 950).unwrap();
    assert_eq!(
        (paid.from_old, paid.remaining),
        (1, 8),
        "the old cell is spent first"
    );
    leases.give_back(None, 1, paid.from_old, 950);
    // At 1,000 the old cell expires with its own lease; the 8 new ones remain.
    let paid = leases.try_pay(None, 1, 1_000).unwrap();
    assert_eq!((paid.from_old, paid.remaining), (0, 7));
    assert!(!slot.holds_cells(1_900));
}

#[test]
fn the_key_count_is_bounded_and_eviction_is_gradual() {
    let leases = Leases::new(Lease::new(10), 64);
    let slots: Vec<_> = (0..64)
        .map(|k| {
            let slot = leases.slot(Some(k), 0, || format!("k{k}").into_bytes());
            let Spend::Fetch(guard) = slot.spend(1, 0) else {
                panic!()
            };
            // Leases fetched one after another, held 1,000,000: the first expire first.
            guard.granted(10, 1, 0, k, k, 1_000_000);
            slot
        })
        .collect();
    drop(slots);
    let _ = leases.slot(Some(1_000), 10, || b"new".to_vec());
    assert_eq!(
        leases.len(),
        64 - 8 + 1,
        "an eighth made room, not everything"
    );
    for k in 0..8 {
        assert!(
            leases.try_pay(Some(k), 1, 20).is_none(),
            "{k}: expires soonest, dropped"
        );
    }
    for k in 8..64 {
        assert!(leases.try_pay(Some(k), 1, 20).is_some(), "{k}: kept");
    }
    for k in 2_000..3_000 {
        let _ = leases.slot(Some(k), 30, || b"x".to_vec());
        assert!(leases.len() <= 64);
    }
}
