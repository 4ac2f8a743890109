"""EST (RFC 7030, clarified by RFC 8951), sans-I/O.

codec.py   request bodies → DER → CSR facts; certs-only, CsrAttrs, the
           serverkeygen multipart, base64 in lines
checks.py  HTTP Basic, tls-unique channel binding, the re-enrolment rules,
           the transaction identity
server.py  EstRequest (bytes + transport facts) → enrolment core → EstReply
http.py    the Flask binding; transport facts come from a callable the
           composition root hands in
"""
