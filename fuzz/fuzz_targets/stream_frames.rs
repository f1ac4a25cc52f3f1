//! Fuzzes the length-prefixed stream decoders (driver control stream, edge <-> hub link),
//! feeding the input in two chunks split at its first byte's value.
#![no_main]
use libfuzzer_sys::fuzz_target;
use protocol::framing::{FrameDecoder, MAX_DRIVER_FRAME, MAX_HUB_FRAME};
use protocol::wire::{DriverToEdge, EdgeToDriver, EdgeToHub, HubToEdge};

fn drain<T: serde::de::DeserializeOwned>(data: &[u8], max: usize) {
    let split = data.first().map(|b| usize::from(*b)).unwrap_or(0).min(data.len());
    let mut d = FrameDecoder::new(max);
    for chunk in [&data[..split], &data[split..]] {
        d.push(chunk);
        loop {
            match d.next_frame::<T>() {
                Ok(Some(_)) => continue,
                Ok(None) | Err(_) => break,
            }
        }
    }
}

fuzz_target!(|data: &[u8]| {
    drain::<DriverToEdge>(data, MAX_DRIVER_FRAME);
    drain::<EdgeToDriver>(data, MAX_DRIVER_FRAME);
    drain::<EdgeToHub>(data, MAX_HUB_FRAME);
    drain::<HubToEdge>(data, MAX_HUB_FRAME);
});
