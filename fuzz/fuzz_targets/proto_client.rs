//! The controller's client protocol: arbitrary bytes through `LineBuf`, each line decoded as
//! the controller decodes requests and as libupkeeper decodes replies. Nothing may panic, and
//! whatever decodes must encode and decode again.
#![no_main]

use libfuzzer_sys::fuzz_target;
use upk_core::client::{ClientReply, ClientRequest};
use upk_core::proto::{decode, encode, Envelope};

#[path = "framing.rs"]
mod framing;

fuzz_target!(|data: &[u8]| {
    for line in framing::lines(data).unwrap_or_default() {
        if let Ok(req) = decode::<ClientRequest>(&line) {
            let _ = (req.body.is_control(), req.body.service());
            let again: Envelope<ClientRequest> =
                decode(encode(&req).trim_ascii_end()).expect("a request re-decodes");
            assert_eq!(again.id, req.id);
        }
        if let Ok(reply) = decode::<ClientReply>(&line) {
            let again: Envelope<ClientReply> =
                decode(encode(&reply).trim_ascii_end()).expect("a reply re-decodes");
            assert_eq!(again.id, reply.id);
        }
    }
});
