//! `sluice demo`, the README's main command, runs end to end and reports.

use crate::util::{run, sluice};

#[test]
fn demo_runs_every_trigger_and_the_action_chain() {
    let r = run({
        let mut c = sluice();
        c.arg("demo");
        c
    });
    r.assert_ok();
    for t in [
        "new_or_updated_company",
        "new_contact",
        "contact_updated",
        "new_ticket",
        "ticket_updated",
        "new_conversation",
        "conversation_updated",
    ] {
        assert_eq!(
            r.stdout.matches(&format!("   {t} ")).count(),
            2,
            "{t} in both polls:\n{}",
            r.stdout
        );
    }
    assert!(r.stdout.contains("5000 records"), "{}", r.stdout);
    assert!(r.stdout.contains("create_event") && r.stdout.contains("accepted"));
    assert!(r.stdout.contains("requests in all"));
}
