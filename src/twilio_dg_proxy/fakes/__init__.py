"""Fakes of Twilio and Deepgram used by the tests, the simulator and the benchmark."""
