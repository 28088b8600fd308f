# test_cli runs the kdengine binary itself.
if(TARGET test_cli)
  add_dependencies(test_cli kdengine)
  target_compile_definitions(test_cli PRIVATE KD_KDENGINE_BIN="$<TARGET_FILE:kdengine>")
endif()
if(TARGET test_eval_chunked)
  add_dependencies(test_eval_chunked kdengine)
  target_compile_definitions(test_eval_chunked PRIVATE KD_KDENGINE_BIN="$<TARGET_FILE:kdengine>")
endif()
