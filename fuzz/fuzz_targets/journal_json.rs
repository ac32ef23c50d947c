//! A journal file as it may be found in the state directory: parsing never panics, the
//! queries over it hold, and what parses writes back to the same data.
#![no_main]

use libfuzzer_sys::fuzz_target;
use rpatch::journal::JournalData;

fuzz_target!(|data: &[u8]| {
    let Ok(journal) = serde_json::from_slice::<JournalData>(data) else {
        return;
    };
    let _ = (journal.next_id(), journal.next_group(), journal.slots_in_use());
    for r in journal.live().take(64) {
        let top = journal.top_of_stack(r.address).expect("a live record is on its stack");
        assert!(top.id >= r.id);
    }
    let text = serde_json::to_vec(&journal).expect("serialises");
    let again: JournalData = serde_json::from_slice(&text).expect("reparses");
    assert_eq!(again, journal);
});
