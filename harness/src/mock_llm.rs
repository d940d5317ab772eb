//! mock_llm (to be written)
