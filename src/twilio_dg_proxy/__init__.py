"""twilio-dg-proxy: live transcripts of Twilio calls from Deepgram, for any number of watchers."""

__version__ = "0.1.0"
