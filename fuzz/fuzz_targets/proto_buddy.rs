//! The buddy's protocol: arbitrary bytes through `LineBuf`, each line decoded as the buddy
//! decodes requests and as the controller and clients decode replies. Nothing may panic, and
//! whatever decodes must encode and decode again.
#![no_main]

use libfuzzer_sys::fuzz_target;
use upk_core::proto::{decode, encode, BuddyReply, BuddyRequest, Envelope};

#[path = "framing.rs"]
mod framing;

fuzz_target!(|data: &[u8]| {
    for line in framing::lines(data).unwrap_or_default() {
        if let Ok(req) = decode::<BuddyRequest>(&line) {
            if let BuddyRequest::Signal { signal, .. } = &req.body {
                let _ = signal.resolve();
            }
            let again: Envelope<BuddyRequest> =
                decode(encode(&req).trim_ascii_end()).expect("a request re-decodes");
            assert_eq!(again.id, req.id);
        }
        if let Ok(reply) = decode::<BuddyReply>(&line) {
            let again: Envelope<BuddyReply> =
                decode(encode(&reply).trim_ascii_end()).expect("a reply re-decodes");
            assert_eq!(again.id, reply.id);
        }
    }
});
