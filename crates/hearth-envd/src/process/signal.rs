// SPDX-License-Identifier: Apache-2.0
//! The signals a client may send: the protocol only has SIGTERM and SIGKILL.

use crate::error::EnvdError;
use buffa::EnumValue;
use hearth_envd_proto::process::Signal as WireSignal;
use nix::sys::signal::Signal;

/// The OS signal for a protocol `Signal` value.
pub(crate) fn from_wire(value: EnumValue<WireSignal>) -> Result<Signal, EnvdError> {
    match value.as_known() {
        Some(WireSignal::SIGNAL_SIGTERM) => Ok(Signal::SIGTERM),
        Some(WireSignal::SIGNAL_SIGKILL) => Ok(Signal::SIGKILL),
        _ => Err(EnvdError::InvalidArgument(format!(
            "unsupported signal {}: use SIGNAL_SIGTERM or SIGNAL_SIGKILL",
            value.to_i32()
        ))),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn term_and_kill_map_to_os_signals() {
        assert_eq!(
            from_wire(WireSignal::SIGNAL_SIGTERM.into()).unwrap(),
            Signal::SIGTERM
        );
        assert_eq!(
            from_wire(WireSignal::SIGNAL_SIGKILL.into()).unwrap(),
            Signal::SIGKILL
        );
    }

    #[test]
    fn unspecified_or_unknown_signal_is_invalid_argument() {
        for v in [0, 2, 99] {
            let err = from_wire(EnumValue::from(v)).unwrap_err();
            assert!(matches!(err, EnvdError::InvalidArgument(_)), "{v}");
        }
    }
}
