"""CMPv2 (RFC 4210, RFC 9480; Lightweight CMP Profile RFC 9483), sans-I/O.

der.py         DER tag-length-value reader/writer for the outer layers
asn1.py        pyasn1 specs with certificates kept opaque
header.py      PKIHeader as a value; reply headers
codec.py       DER ⇄ PkiMessage; ProtectedPart sliced from the input
bodies.py      reply bodies: ip/cp/kup, pkiconf, rp, genp, pollRep, error
macs.py        PasswordBasedMac and PBMAC1 parameters, capped
protection.py  verify and create MAC and signature protection
messages.py    ir/cr/kur/p10cr → subject, key, extensions, verified POP
readers.py     certConf, rr, pollReq, genm contents
"""
