set pagination off
set breakpoint pending on
set print thread-events off
set confirm off
handle SIGPIPE nostop noprint pass
break PyEval_AcquireThread if $_thread > 1
commands
  silent
  printf "=== HOLD: thread %d (gloo worker) wants the GIL to free a finished work; only the main thread runs on\n", $_thread
  bt 8
  disable 1
  enable 2
  set scheduler-locking on
  thread 1
  continue
end
break _PyThreadState_DeleteExcept
disable 2
commands
  silent
  printf "=== main thread: interpreter finalization has begun; every thread runs again\n"
  set scheduler-locking off
  continue
end
catch signal SIGABRT
commands
  printf "=== SIGABRT on thread %d\n", $_thread
  bt 25
  continue
end
run
