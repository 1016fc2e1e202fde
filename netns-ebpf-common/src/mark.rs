//! EVE's production connection-mark layout:
//! bits 31-24 app number, bit 23 drop, bit 22 user ACE, bits 21-0 ACE id.

pub const APP_SHIFT: u32 = 24;
pub const DROP_BIT: u32 = 1 << 23;
pub const USER_ACE_BIT: u32 = 1 << 22;
pub const ACE_ID_MASK: u32 = 0x3f_ffff;
/// The ACE id of the implicit default-drop rule at the end of every ACL.
pub const DEFAULT_DROP_ACE_ID: u32 = ACE_ID_MASK;

/// Ids of the implicit (non-user) rules, as EVE numbers them.
pub mod implicit {
    pub const APP_DHCP: u32 = 6;
    pub const APP_DNS: u32 = 7;
    /// A flow that the agent's own netns (or the NI gateway) starts toward an app. (EVE
    /// uses 10 for "in_dhcp"; the seed's PoC marks EVE-initiated flows 0xa.)
    pub const EVE_INITIATED: u32 = 10;
    /// DHCP from an outside server toward an app of a switch NI.
    pub const IN_DHCP: u32 = 10;
    pub const APP_METADATA_HTTP: u32 = 11;
}

pub const fn compose(app_num: u32, ace_id: u32, user_ace: bool, drop: bool) -> u32 {
    let mut mark = (app_num & 0xff) << APP_SHIFT | (ace_id & ACE_ID_MASK);
    if user_ace {
        mark |= USER_ACE_BIT;
    }
    if drop {
        mark |= DROP_BIT;
    }
    mark
}

/// The fields of a mark, for display.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Decoded {
    pub app_num: u32,
    pub ace_id: u32,
    pub user_ace: bool,
    pub drop: bool,
}

pub const fn decode(mark: u32) -> Decoded {
    Decoded { app_num: mark >> APP_SHIFT, ace_id: mark & ACE_ID_MASK, user_ace: mark & USER_ACE_BIT != 0, drop: mark & DROP_BIT != 0 }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn production_layout() {
        // App 1 allowed by user ACE 1.
        assert_eq!(compose(1, 1, true, false), 0x0140_0001);
        // App 1 default drop: EVE's 0x01bfffff (the seed's PoC showed 0x1ffffff).
        assert_eq!(compose(1, DEFAULT_DROP_ACE_ID, false, true), 0x01bf_ffff);
        assert_eq!(compose(3, implicit::APP_DNS, false, false), 0x0300_0007);
        let d = decode(0x01bf_ffff);
        assert_eq!((d.app_num, d.ace_id, d.user_ace, d.drop), (1, DEFAULT_DROP_ACE_ID, false, true));
    }

    #[test]
    fn ace_id_is_truncated_to_22_bits() {
        assert_eq!(compose(0, 0xffff_ffff, false, false), ACE_ID_MASK);
        assert_eq!(compose(0x1ff, 0, false, false), 0xff00_0000);
    }
}
