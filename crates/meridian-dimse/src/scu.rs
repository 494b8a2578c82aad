//! Storage SCU: `meridian send` and the sub-operations of C-MOVE.

use std::time::Duration;

use dicom_dictionary_std::tags;
use dicom_ul::association::client::{AsyncClientAssociation, ClientAssociationOptions};
use dicom_ul::pdu::PresentationContextResultReason;
use tokio::net::TcpStream;

use crate::msg::{self, DimseError, Incoming, Receiver, cmd, el_ae, el_u16, el_ui};

/// Read and write timeout of an outgoing association.
const TIMEOUT: Duration = Duration::from_secs(60);

/// An association to a storage SCP.
pub struct StoreScu {
    assoc: AsyncClientAssociation<TcpStream>,
    rx: Receiver,
    next_id: u16,
}

/// Result of one C-STORE sub-operation.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StoreStatus {
    pub status: u16,
    pub comment: String,
}

impl StoreStatus {
    pub fn is_success(&self) -> bool {
        self.status == 0
    }
    pub fn is_warning(&self) -> bool {
        self.status == 0x0001 || (self.status & 0xF000) == 0xB000
    }
}

impl StoreScu {
    /// Opens an association proposing each (SOP class, transfer syntaxes) context.
    pub async fn connect(
        addr: &str,
        called_ae: &str,
        calling_ae: &str,
        contexts: &[(String, Vec<String>)],
        max_pdu: u32,
    ) -> Result<StoreScu, DimseError> {
        let mut opts = ClientAssociationOptions::new()
            .calling_ae_title(calling_ae.to_owned())
            .called_ae_title(called_ae.to_owned())
            .max_pdu_length(max_pdu)
            .read_timeout(TIMEOUT)
            .write_timeout(TIMEOUT)
            .connection_timeout(Duration::from_secs(10));
        for (sop, ts) in contexts {
            opts = opts.with_presentation_context(sop.clone(), ts.clone());
        }
        let mut assoc = opts.establish_with_async(addr).await?;
        // Loopback and LAN peers: never wait on Nagle for the small command PDUs.
        assoc.inner_stream().set_nodelay(true).ok();
        Ok(StoreScu {
            assoc,
            rx: Receiver::new(TIMEOUT),
            next_id: 1,
        })
    }

    /// The accepted context for a SOP class and transfer syntax, if any.
    pub fn context_for(&self, sop_class: &str, ts: &str) -> Option<u8> {
        self.assoc
            .presentation_contexts()
            .iter()
            .find(|pc| {
                pc.reason == PresentationContextResultReason::Acceptance
                    && pc.abstract_syntax.trim_end_matches('\0') == sop_class
                    && pc.transfer_syntax.trim_end_matches('\0') == ts
            })
            .map(|pc| pc.id)
    }

    /// Any accepted context for a SOP class: (id, transfer syntax).
    pub fn any_context_for(&self, sop_class: &str) -> Vec<(u8, String)> {
        self.assoc
            .presentation_contexts()
            .iter()
            .filter(|pc| {
                pc.reason == PresentationContextResultReason::Acceptance
                    && pc.abstract_syntax.trim_end_matches('\0') == sop_class
            })
            .map(|pc| (pc.id, pc.transfer_syntax.trim_end_matches('\0').to_owned()))
            .collect()
    }

    /// Sends one data set with C-STORE and waits for the response.
    pub async fn store(
        &mut self,
        pc_id: u8,
        sop_class: &str,
        sop_uid: &str,
        dataset: &[u8],
        origin: Option<(&str, u16)>,
    ) -> Result<StoreStatus, DimseError> {
        let id = self.next_id;
        self.next_id = self.next_id.wrapping_add(1).max(1);
        let mut els = vec![
            el_ui(tags::AFFECTED_SOP_CLASS_UID, sop_class),
            el_u16(tags::COMMAND_FIELD, cmd::C_STORE_RQ),
            el_u16(tags::MESSAGE_ID, id),
            el_u16(tags::PRIORITY, 0),
            el_u16(tags::COMMAND_DATA_SET_TYPE, 0x0000),
            el_ui(tags::AFFECTED_SOP_INSTANCE_UID, sop_uid),
        ];
        if let Some((ae, mid)) = origin {
            els.push(el_ae(tags::MOVE_ORIGINATOR_APPLICATION_ENTITY_TITLE, ae));
            els.push(el_u16(tags::MOVE_ORIGINATOR_MESSAGE_ID, mid));
        }
        let command = msg::encode_command(els)?;
        msg::send(&mut self.assoc, pc_id, command, Some(dataset), TIMEOUT).await?;
        match self.rx.receive(&mut self.assoc, 1 << 20).await? {
            Incoming::Message(m) if m.field() == cmd::C_STORE_RSP => Ok(StoreStatus {
                status: msg::get_u16(&m.command, tags::STATUS).unwrap_or(0xFFFF),
                comment: m.str(tags::ERROR_COMMENT),
            }),
            Incoming::Message(m) => Err(DimseError::Unexpected(format!(
                "command 0x{:04X} instead of C-STORE-RSP",
                m.field()
            ))),
            Incoming::Released | Incoming::Aborted => Err(DimseError::Aborted),
        }
    }

    pub async fn release(self) -> Result<(), DimseError> {
        self.assoc.release().await?;
        Ok(())
    }
}
